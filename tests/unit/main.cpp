// SPDX-License-Identifier: MIT
// Catch2's runner, plus the skips of skip.hpp: listed at the end, exit status 77.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "skip.hpp"

#include <cstdio>
#include <vector>

namespace {

std::vector<std::string>& skipped()
{
    static std::vector<std::string> list;
    return list;
}

} // namespace

void bjd::test::skip(const std::string& why)
{
    WARN("SKIPPED: " << why);
    skipped().push_back(Catch::getResultCapture().getCurrentTestName() + ": " + why);
}

int main(int argc, char* argv[])
{
    const int rc = Catch::Session().run(argc, argv);
    if (skipped().empty())
        return rc;
    std::fprintf(stderr, "%zu test case(s) SKIPPED:\n", skipped().size());
    for (const auto& s : skipped())
        std::fprintf(stderr, "  %s\n", s.c_str());
    return rc == 0 ? bjd::test::skipped_exit_code : rc;
}
