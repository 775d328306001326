// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// The test Ceph cluster for Catch2 cases tagged [rbd]. tests/CMakeLists.txt runs each such
/// case as a ctest of its own that needs the `ceph` fixture (tests/ceph/cluster.sh started in
/// the build directory) and sets BJD_CEPH_CONF to that cluster's ceph.conf:
///
///     TEST_CASE("rbd: reads what it wrote", "[rbd]")
///     {
///         const std::string conf = bjd::test::ceph_conf_or_skip();
///         if (conf.empty())
///             return;
///         ...   // pool "rbd"; use a namespace or image name of the test's own
///     }
///
/// The cluster's users (client.admin by default, client.bjd-bad with a key the cluster does
/// not know, client.bjd-nocaps without OSD caps) are described in tests/ceph/cluster.sh.
#include "skip.hpp"

#include <cstdlib>
#include <string>
#include <sys/stat.h>

namespace bjd::test {

/// The cluster's ceph.conf, or "" after skip() when there is none (Ceph is not installed, or
/// the test runs outside ctest without BJD_CEPH_CONF).
inline std::string ceph_conf_or_skip()
{
    const char* conf = std::getenv("BJD_CEPH_CONF");
    struct stat st{};
    if (conf == nullptr || *conf == '\0' || ::stat(conf, &st) != 0 || !S_ISREG(st.st_mode)) {
        skip("no Ceph test cluster (BJD_CEPH_CONF does not name a ceph.conf; "
             "tests/ceph/cluster.sh starts one)");
        return {};
    }
    return conf;
}

} // namespace bjd::test
