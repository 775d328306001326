// SPDX-License-Identifier: MIT
#pragma once
// Throwaway TLS material (tests/qmp/tls/gencerts.sh: certtool and psktool) in a temp dir,
// made once per test binary.
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>

#include <unistd.h>

namespace bjd::test {

inline const std::string& tls_dir()
{
    static const std::string dir = [] {
        char tmpl[] = "/tmp/bjd-tls-XXXXXX";
        if (!::mkdtemp(tmpl))
            throw std::runtime_error("mkdtemp failed");
        const std::filesystem::path script = std::filesystem::path(BJD_TESTS_DIR) / "qmp" / "tls" / "gencerts.sh";
        std::string cmd = "sh '" + script.string() + "' '" + tmpl + "' localhost";
        if (std::system(cmd.c_str()) != 0)
            throw std::runtime_error("gencerts.sh failed (certtool and psktool are in gnutls-bin)");
        // Not tls_dir() at exit: that string is destroyed before atexit handlers registered
        // during its initialisation run.
        static char doomed[sizeof tmpl];
        std::memcpy(doomed, tmpl, sizeof tmpl);
        std::atexit([] { std::filesystem::remove_all(doomed); });
        return std::string(tmpl);
    }();
    return dir;
}

} // namespace bjd::test
