// SPDX-License-Identifier: MIT
// blkdebug: a pass-through filter over its `image` child that fails requests on purpose, with
// QEMU 7.2's rule semantics (block/blkdebug.c), so that error paths (job error policies,
// failed-operation statistics) can be tested against both daemons with the same options.
//
// Rules. An inject-error rule belongs to an event and a state (0: any). When the event fires,
// every rule of that event valid in the current state is processed: error rules become the
// active set (the first one processed clears what earlier events activated), set-state rules
// pick the state that holds after the event. A request fails when an active rule's iotype
// mask contains its kind and its sector (-1: any) lies inside the request; the first such rule
// in definition order decides the errno, and a `once` rule is then deleted. An active rule
// stays active until another event with error rules fires, so a `read_aio` rule without
// `iotype` also fails the writes and flushes that follow the read: that is QEMU's behaviour.
//
// Events. QEMU fires read_aio/write_aio from the format driver above blkdebug (on its `file`
// child) and the pwritev*/flush_to_* events from the generic block layer. Drivers here do not
// emit events, so the node derives them from the request that reaches it (see BlkdebugEvent
// in schemas/block-core.json): read_aio/write_aio only while a node holds it as its `file`
// child (raw, qcow2), so a blkdebug node exported or mirrored directly sees only pwritev*
// and flush events, as in QEMU. qcow2 metadata I/O fires read_aio/write_aio too instead of
// l2_load etc.
#include "bjd/block/driver.hpp"
#include "bjd/block/query.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <bit>
#include <cctype>
#include <climits>
#include <cstring>
#include <fstream>
#include <list>
#include <sstream>

namespace bjd::block {

// ---- rules (no I/O; unit-tested through the node) ---------------------------------------------

namespace {

constexpr std::uint64_t mask_of(qapi::blkdebug_io_type t) noexcept { return 1ull << static_cast<unsigned>(t); }

/// QEMU's default iotype mask: every kind but block-status.
constexpr std::uint64_t default_mask = mask_of(qapi::blkdebug_io_type::read) | mask_of(qapi::blkdebug_io_type::write) |
                                       mask_of(qapi::blkdebug_io_type::write_zeroes) |
                                       mask_of(qapi::blkdebug_io_type::discard) |
                                       mask_of(qapi::blkdebug_io_type::flush);

struct rule {
    qapi::blkdebug_event event{};
    std::int64_t state = 0;             ///< 0: any state
    bool inject = true;                 ///< else set-state
    // inject-error
    std::int64_t error = EIO;           ///< <= 0 injects nothing (QEMU returns -errno as is)
    std::uint64_t iotype_mask = default_mask;
    std::int64_t sector = -1;           ///< -1: any request
    bool once = false;
    bool immediately = false;
    // set-state
    std::int64_t new_state = 0;
};

class rule_set {
public:
    void add(rule r) { rules_.push_back(r); }

    /// Processes the rules of `e` (QEMU's blkdebug_debug_event).
    void fire(qapi::blkdebug_event e)
    {
        std::int64_t next = state_;
        bool cleared = false;
        for (auto it = rules_.begin(); it != rules_.end(); ++it) {
            if (it->event != e || (it->state != 0 && it->state != state_))
                continue;
            if (it->inject) {
                if (!cleared) {
                    active_.clear();
                    cleared = true;
                }
                active_.push_back(it);
            } else {
                next = it->new_state;
            }
        }
        state_ = next;
    }

    struct verdict {
        int error = 0;
        bool immediately = false;
    };

    /// The error for a request of `kind` over [offset, offset+bytes) (QEMU's rule_check).
    verdict check(std::uint64_t offset, std::uint64_t bytes, qapi::blkdebug_io_type kind)
    {
        for (auto a = active_.begin(); a != active_.end(); ++a) {
            const rule& r = **a;
            if (!(r.iotype_mask & mask_of(kind)))
                continue;
            if (r.sector != -1) {
                // A negative sector other than -1 is a huge unsigned offset in QEMU: never matches.
                if (r.sector < 0 || bytes == 0)
                    continue;
                auto at = static_cast<std::uint64_t>(r.sector) * 512;
                if (at < offset || at - offset >= bytes)
                    continue;
            }
            if (r.error <= 0)
                return {};   // QEMU: a matching rule without an error lets the request through
            verdict v{static_cast<int>(std::min<std::int64_t>(r.error, INT_MAX)), r.immediately};
            if (r.once) {
                auto it = *a;
                active_.erase(a);
                rules_.erase(it);
            }
            return v;
        }
        return {};
    }

private:
    std::list<rule> rules_;                          ///< definition order
    std::vector<std::list<rule>::iterator> active_;  ///< definition order
    std::int64_t state_ = 1;                         ///< QEMU starts in state 1
};

/// The parts of a QEMU config file blkdebug reads: `[inject-error]` / `[set-state]` groups of
/// `key = "value"` lines; `#` comments.
qapi::result<void> read_config(const std::string& path, std::vector<rule>& out)
{
    std::ifstream in(path);
    if (!in) {
        int e = errno ? errno : ENOENT;
        return qapi::generic("Could not read blkdebug config file: " + strerror_text(errno_error(e)));
    }
    auto parse_error = [] { return qapi::generic("Could not parse blkdebug config file"); };
    auto trim = [](std::string s) {
        auto b = s.find_first_not_of(" \t\r");
        auto e = s.find_last_not_of(" \t\r");
        return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
    };
    auto number = [](const std::string& v, std::int64_t& n) {
        if (v.empty())
            return false;
        char* end = nullptr;
        errno = 0;
        n = std::strtoll(v.c_str(), &end, 0);
        return errno == 0 && *end == '\0';
    };
    std::optional<rule> cur;
    std::string event_name;
    bool have_event = false;
    auto finish = [&]() -> qapi::result<void> {
        if (!cur)
            return {};
        if (!have_event)
            return qapi::generic("Missing event name for rule");
        if (!qapi::parse_enum(event_name, cur->event))
            return qapi::generic("Invalid parameter '" + event_name + "'");
        out.push_back(*cur);
        cur.reset();
        return {};
    };
    std::string line;
    while (std::getline(in, line)) {
        line = trim(line);
        if (line.empty() || line[0] == '#')
            continue;
        if (line[0] == '[') {
            if (auto r = finish(); !r)
                return r;
            auto close = line.find(']');
            if (close == std::string::npos)
                return parse_error();
            std::string group = trim(line.substr(1, close - 1));
            if (auto sp = group.find_first_of(" \t"); sp != std::string::npos)
                group = group.substr(0, sp);   // [group "id"]
            if (group != "inject-error" && group != "set-state")
                return parse_error();
            cur = rule{};
            cur->inject = group == "inject-error";
            have_event = false;
            continue;
        }
        auto eq = line.find('=');
        if (!cur || eq == std::string::npos)
            return parse_error();
        std::string key = trim(line.substr(0, eq));
        std::string val = trim(line.substr(eq + 1));
        if (val.size() < 2 || val.front() != '"' || val.back() != '"')
            return parse_error();
        val = val.substr(1, val.size() - 2);
        std::int64_t n = 0;
        if (key == "event") {
            event_name = val;
            have_event = true;
        } else if (key == "state" && number(val, n)) {
            cur->state = n;
        } else if (cur->inject && key == "errno" && number(val, n)) {
            cur->error = n;
        } else if (cur->inject && key == "sector" && number(val, n)) {
            cur->sector = n;
        } else if (cur->inject && (key == "once" || key == "immediately") && (val == "on" || val == "off")) {
            (key == "once" ? cur->once : cur->immediately) = val == "on";
        } else if (cur->inject && key == "iotype") {
            qapi::blkdebug_io_type t{};
            if (!qapi::parse_enum(val, t))
                return qapi::generic("Invalid parameter '" + val + "'");
            cur->iotype_mask = mask_of(t);
        } else if (!cur->inject && key == "new_state" && number(val, n)) {
            cur->new_state = n;
        } else {
            return parse_error();
        }
    }
    return finish();
}

// ---- the node --------------------------------------------------------------------------------

class blkdebug_node final : public node {
public:
    blkdebug_node(node_options o, std::shared_ptr<node> image, const qapi::blockdev_options_blkdebug& opts,
                  std::vector<rule> rules, std::uint32_t align)
        : node(std::move(o)), config_(opts.config.value_or("")), align_(align)
    {
        add_child("image", std::move(image));
        for (auto& r : rules)
            rules_.add(r);
        // What QEMU's json:{} filename lists: the options given, flattened as QEMU's
        // full_open_options are ("inject-error.0.event").
        auto put = [&](const char* key, const std::optional<std::int64_t>& v) {
            if (v)
                extra_[key] = *v;
        };
        put("align", opts.align);
        put("max-transfer", opts.max_transfer);
        put("opt-write-zero", opts.opt_write_zero);
        put("max-write-zero", opts.max_write_zero);
        put("opt-discard", opts.opt_discard);
        put("max-discard", opts.max_discard);
        if (opts.inject_error) {
            for (std::size_t i = 0; i < opts.inject_error->size(); ++i) {
                const auto& r = (*opts.inject_error)[i];
                std::string p = "inject-error." + std::to_string(i) + ".";
                extra_[p + "event"] = std::string(qapi::to_string(r.event));
                if (r.state) extra_[p + "state"] = *r.state;
                if (r.iotype) extra_[p + "iotype"] = std::string(qapi::to_string(*r.iotype));
                if (r.errno_) extra_[p + "errno"] = *r.errno_;
                if (r.sector) extra_[p + "sector"] = *r.sector;
                if (r.once) extra_[p + "once"] = *r.once;
                if (r.immediately) extra_[p + "immediately"] = *r.immediately;
            }
        }
        if (opts.set_state) {
            for (std::size_t i = 0; i < opts.set_state->size(); ++i) {
                const auto& r = (*opts.set_state)[i];
                std::string p = "set-state." + std::to_string(i) + ".";
                extra_[p + "event"] = std::string(qapi::to_string(r.event));
                if (r.state) extra_[p + "state"] = *r.state;
                extra_[p + "new_state"] = r.new_state;
            }
        }
    }

    std::string_view driver() const noexcept override { return "blkdebug"; }
    std::string filename() const override { return "blkdebug:" + config_ + ":" + image()->filename(); }
    std::optional<boost::json::object> json_options() const override
    {
        // QEMU's blkdebug_refresh_filename: "blkdebug:CONFIG:IMAGE" while only config and a
        // plainly named image were given, else json:{…} of everything given.
        auto child = image()->json_options();
        if (extra_.empty() && !child)
            return std::nullopt;
        boost::json::object o = extra_;
        o["driver"] = "blkdebug";
        o["image"] = options_json(*image());
        if (!config_.empty())
            o["config"] = config_;
        return o;
    }
    std::uint64_t size() const noexcept override { return image()->size(); }
    std::uint32_t request_alignment() const noexcept override
    {
        return std::max(align_, image()->request_alignment());
    }
    bool zero_init() const noexcept override { return image()->zero_init(); }
    node* primary_child() const noexcept override { return child("image"); }
    bool is_filter() const noexcept override { return true; }

protected:
    asio::awaitable<result<void>> do_read(std::uint64_t off, std::span<std::byte> buf) override
    {
        if (under_format())
            rules_.fire(qapi::blkdebug_event::read_aio);
        if (int e = co_await check(off, buf.size(), qapi::blkdebug_io_type::read))
            co_return errno_error(e);
        co_return co_await image()->read(off, buf);
    }
    asio::awaitable<result<void>> do_write(std::uint64_t off, std::span<const std::byte> buf, bool fua) override
    {
        if (under_format())
            rules_.fire(qapi::blkdebug_event::write_aio);
        rules_.fire(qapi::blkdebug_event::pwritev);
        ++write_gen_;
        result<void> r;
        if (int e = co_await check(off, buf.size(), qapi::blkdebug_io_type::write))
            r = errno_error(e);
        else
            r = co_await image()->write(off, buf, fua);
        rules_.fire(qapi::blkdebug_event::pwritev_done);
        co_return r;
    }
    asio::awaitable<result<void>> do_write_zeroes(std::uint64_t off, std::uint64_t len, zero_flags f) override
    {
        rules_.fire(qapi::blkdebug_event::pwritev_zero);
        ++write_gen_;
        result<void> r;
        if (int e = co_await check(off, len, qapi::blkdebug_io_type::write_zeroes)) {
            r = errno_error(e);
        } else {
            f.no_fallback = true;   // the layer above emulates, once, at the top
            r = co_await image()->write_zeroes(off, len, f);
        }
        rules_.fire(qapi::blkdebug_event::pwritev_done);
        co_return r;
    }
    asio::awaitable<result<void>> do_discard(std::uint64_t off, std::uint64_t len) override
    {
        ++write_gen_;
        if (int e = co_await check(off, len, qapi::blkdebug_io_type::discard))
            co_return errno_error(e);
        co_return co_await image()->discard(off, len);
    }
    asio::awaitable<result<void>> do_flush() override
    {
        rules_.fire(qapi::blkdebug_event::flush_to_os);
        // QEMU's bdrv_co_flush goes no further when nothing was written since the last
        // successful flush: no flush_to_disk event, no flush request for the rules to fail.
        if (flushed_gen_ == write_gen_)
            co_return result<void>{};
        auto gen = write_gen_;
        rules_.fire(qapi::blkdebug_event::flush_to_disk);
        if (int e = co_await check(0, 0, qapi::blkdebug_io_type::flush))
            co_return errno_error(e);
        auto r = co_await image()->flush();
        if (r)
            flushed_gen_ = gen;
        co_return r;
    }
    asio::awaitable<result<extent>> do_block_status(std::uint64_t off, std::uint64_t len) override
    {
        if (int e = co_await check(off, len, qapi::blkdebug_io_type::block_status))
            co_return errno_error(e);
        co_return co_await image()->block_status(off, len);
    }

private:
    node* image() const noexcept { return child("image"); }

    /// Whether a format driver sits above (holds this node as its `file` child): the parent
    /// that fires read_aio/write_aio in QEMU.
    bool under_format() const noexcept
    {
        const auto& ps = parents();
        return std::any_of(ps.begin(), ps.end(),
                           [](const edge* e) { return e->kind() == parent_kind::node && e->role() == "file"; });
    }

    /// The errno to fail with, 0 to pass the request on. Like QEMU, a failure is delivered
    /// after a trip through the event loop unless the rule says `immediately`.
    asio::awaitable<int> check(std::uint64_t off, std::uint64_t len, qapi::blkdebug_io_type kind)
    {
        auto v = rules_.check(off, len, kind);
        if (v.error && !v.immediately)
            co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
        co_return v.error;
    }

    rule_set rules_;
    std::string config_;
    std::uint32_t align_;
    boost::json::object extra_;
    std::uint64_t write_gen_ = 0;
    std::uint64_t flushed_gen_ = 0;
};

} // namespace

qapi::result<std::shared_ptr<node>> open_blkdebug(node_options common, std::shared_ptr<node> image,
                                                 const qapi::blockdev_options_blkdebug& o)
{
    // QEMU's blkdebug_open, in its order and words: the rules (config file first, then the
    // options), the child, then the limits.
    std::vector<rule> rules;
    if (o.config)
        if (auto r = read_config(*o.config, rules); !r)
            return r.error();
    if (o.inject_error)
        for (const auto& ie : *o.inject_error) {
            rule r;
            r.event = ie.event;
            r.state = ie.state.value_or(0);
            r.error = ie.errno_.value_or(EIO);
            if (ie.iotype)
                r.iotype_mask = mask_of(*ie.iotype);
            r.sector = ie.sector.value_or(-1);
            r.once = ie.once.value_or(false);
            r.immediately = ie.immediately.value_or(false);
            rules.push_back(r);
        }
    if (o.set_state)
        for (const auto& ss : *o.set_state) {
            rule r;
            r.inject = false;
            r.event = ss.event;
            r.state = ss.state.value_or(0);
            r.new_state = ss.new_state;
            rules.push_back(r);
        }
    if ((o.take_child_perms && !o.take_child_perms->empty()) ||
        (o.unshare_child_perms && !o.unshare_child_perms->empty()))
        return qapi::generic("blkdebug: take-child-perms and unshare-child-perms are not supported");

    auto size_opt = [](const char* name, const std::optional<std::int64_t>& v) -> qapi::result<std::uint64_t> {
        if (v && *v < 0)
            return qapi::generic(std::string("Parameter '") + name + "' expects a non-negative number below 2^64");
        return static_cast<std::uint64_t>(v.value_or(0));
    };
    auto cannot = [](const char* name, std::uint64_t v) {
        return qapi::generic(std::string("Cannot meet constraints with ") + name + " " + std::to_string(v));
    };
    auto aligned = [](std::uint64_t v, std::uint64_t a) { return a == 0 || v % a == 0; };
    auto align = size_opt("align", o.align);
    if (!align)
        return align.error();
    if (*align && (*align >= INT_MAX || !std::has_single_bit(*align)))
        return cannot("align", *align);
    std::uint64_t eff = std::max<std::uint64_t>(*align, image->request_alignment());

    auto max_transfer = size_opt("max-transfer", o.max_transfer);
    if (!max_transfer)
        return max_transfer.error();
    if (*max_transfer && (*max_transfer >= INT_MAX || !aligned(*max_transfer, eff)))
        return cannot("max-transfer", *max_transfer);
    auto opt_wz = size_opt("opt-write-zero", o.opt_write_zero);
    if (!opt_wz)
        return opt_wz.error();
    if (*opt_wz && (*opt_wz >= INT_MAX || !aligned(*opt_wz, eff)))
        return cannot("opt-write-zero", *opt_wz);
    auto max_wz = size_opt("max-write-zero", o.max_write_zero);
    if (!max_wz)
        return max_wz.error();
    if (*max_wz && (*max_wz >= INT_MAX || !aligned(*max_wz, std::max(*opt_wz, eff))))
        return cannot("max-write-zero", *max_wz);
    auto opt_dc = size_opt("opt-discard", o.opt_discard);
    if (!opt_dc)
        return opt_dc.error();
    if (*opt_dc && (*opt_dc >= INT_MAX || !aligned(*opt_dc, eff)))
        return cannot("opt-discard", *opt_dc);
    auto max_dc = size_opt("max-discard", o.max_discard);
    if (!max_dc)
        return max_dc.error();
    if (*max_dc && (*max_dc >= INT_MAX || !aligned(*max_dc, std::max(*opt_dc, eff))))
        return cannot("max-discard", *max_dc);

    return std::shared_ptr<node>(std::make_shared<blkdebug_node>(std::move(common), std::move(image), o,
                                                                  std::move(rules), static_cast<std::uint32_t>(*align)));
}

} // namespace bjd::block
