// SPDX-License-Identifier: MIT
// A main() for the fuzz targets when they are built without libFuzzer (g++, the normal and
// ASan builds): runs LLVMFuzzerTestOneInput once on each file named on the command line, or on
// each file of each directory named, in name order. That is libFuzzer's regression mode, so
// the committed corpus (seeds and every reproducer of a fixed bug) is checked by ctest in
// every build. Options starting with '-' (libFuzzer's) are ignored.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace fs = std::filesystem;

int main(int argc, char** argv)
{
    std::vector<fs::path> files;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (!a.empty() && a[0] == '-')
            continue;
        if (fs::is_directory(a)) {
            std::vector<fs::path> in;
            for (auto& e : fs::directory_iterator(a))
                if (e.is_regular_file())
                    in.push_back(e.path());
            std::sort(in.begin(), in.end());
            files.insert(files.end(), in.begin(), in.end());
        } else {
            files.emplace_back(a);
        }
    }
    for (auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        if (!in) {
            std::fprintf(stderr, "replay: cannot read %s\n", f.c_str());
            return 2;
        }
        std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::fprintf(stderr, "replay: %s (%zu bytes)\n", f.c_str(), bytes.size());
        LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    }
    std::fprintf(stderr, "replay: %zu input(s) ran\n", files.size());
    return files.empty() ? 1 : 0;
}
