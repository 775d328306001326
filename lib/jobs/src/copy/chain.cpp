// SPDX-License-Identifier: MIT
#include "copy/chain.hpp"

#include <climits>
#include <cstdlib>

namespace bjd::jobs::detail {

namespace {

std::string real_path(const std::string& f)
{
    char buf[PATH_MAX];
    return ::realpath(f.c_str(), buf) ? std::string(buf) : f;
}

} // namespace

std::string image_path(const block::node& n)
{
    const std::string f = n.filename();
    return !f.empty() && f[0] != '/' ? real_path(f) : f;
}

block::node* chain_next(const block::node& n)
{
    return n.is_filter() ? n.primary_child() : n.cow_backing();
}

bool chain_contains(const block::node& top, const block::node* n)
{
    for (const block::node* i = &top; i; i = chain_next(*i))
        if (i == n)
            return true;
    return false;
}

std::shared_ptr<block::node> find_backing_image(const block::node& top, const std::string& name)
{
    const std::string want = real_path(name);
    for (block::node* i = chain_next(top); i; i = chain_next(*i))
        if (!i->is_filter() && (i->filename() == name || real_path(i->filename()) == want))
            return i->shared_from_this();
    return nullptr;
}

boost::asio::awaitable<result<std::pair<bool, std::uint64_t>>> allocated_between(block::node* first, const block::node* stop,
                                                                           std::uint64_t offset, std::uint64_t n)
{
    for (block::node* i = first; i && i != stop; i = chain_next(*i)) {
        if (offset >= i->size())
            break;   // a shorter image: nothing below it counts there either
        if (i->is_filter())
            continue;
        auto st = co_await i->block_status(offset, n);
        if (!st)
            co_return st.error();
        if (st->flags & block::status_allocated)
            co_return std::pair{true, std::min(n, st->length)};
        n = std::min(n, st->length);
    }
    co_return std::pair{false, n};
}

} // namespace bjd::jobs::detail
