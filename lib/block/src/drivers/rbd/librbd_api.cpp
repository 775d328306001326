// SPDX-License-Identifier: MIT
#include "drivers/rbd/librbd_api.hpp"

#include <cassert>
#include <string>

#include <dlfcn.h>

namespace bjd::block::rbd_lib {

namespace {

api loaded;

qapi::result<const api*> open_libraries()
{
    // RTLD_LOCAL: Ceph's own copy of Boost.Asio must not bind to anything of ours, nor ours to
    // its (local-symbols.map keeps the executable from exporting any). librados comes with
    // librbd as its dependency, and dlsym on librbd's handle finds its functions too.
    void* rbd = ::dlopen("librbd.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!rbd) {
        const char* why = ::dlerror();
        return qapi::generic(std::string("rbd is not available: ") + (why ? why : "librbd.so.1") + " (install librbd1)");
    }
    std::string missing;
#define BJD_LIBRBD_RESOLVE(name)                                                      \
    loaded.name = reinterpret_cast<decltype(&::name)>(::dlsym(rbd, #name));           \
    if (!loaded.name)                                                                 \
        missing += std::string(missing.empty() ? "" : ", ") + #name;
    BJD_LIBRBD_FUNCTIONS(BJD_LIBRBD_RESOLVE)
#undef BJD_LIBRBD_RESOLVE
    if (!missing.empty())
        return qapi::generic("rbd is not available: librbd.so.1 lacks " + missing);
    return &loaded;
}

} // namespace

qapi::result<const api*> load()
{
    static const qapi::result<const api*> outcome = open_libraries();
    return outcome;
}

const api& get() noexcept
{
    assert(loaded.rbd_open);
    return loaded;
}

} // namespace bjd::block::rbd_lib
