// SPDX-License-Identifier: MIT
// The blockdev-create job: maps BlockdevCreateOptions onto lib/block's creators.
#include "bjd/jobs/create_job.hpp"

#include "bjd/block/create.hpp"
#include "bjd/block/driver.hpp"
#include "bjd/block/graph.hpp"
#include "bjd/jobs/job_driver.hpp"
#include "bjd/log.hpp"

namespace bjd::jobs {

namespace {

block::prealloc_mode prealloc(const std::optional<qapi::prealloc_mode>& p)
{
    if (!p)
        return block::prealloc_mode::off;
    switch (*p) {
    case qapi::prealloc_mode::off: return block::prealloc_mode::off;
    case qapi::prealloc_mode::metadata: return block::prealloc_mode::metadata;
    case qapi::prealloc_mode::falloc: return block::prealloc_mode::falloc;
    case qapi::prealloc_mode::full: return block::prealloc_mode::full;
    }
    return block::prealloc_mode::off;
}

class create_driver final : public job_driver {
public:
    create_driver(block::graph& g, qapi::blockdev_create_options o) : g_(g), o_(std::move(o)) {}

    asio::awaitable<qapi::result<void>> run(job& j) override
    {
        j.progress_set_remaining(1);
        // (No co_await inside ?: — GCC 12 miscompiles it.)
        qapi::result<void> r;
        if (o_.u.file)
            r = co_await create_file(*o_.u.file);
        else if (o_.u.rbd)
            r = co_await create_rbd(*o_.u.rbd);
        else
            r = co_await create_qcow2(j, *o_.u.qcow2);
        j.progress_done(1);
        if (!r)
            log::get("jobs")->info("create job '{}' failed: {}", j.id(), r.error().desc);
        co_return r;
    }

private:
    asio::awaitable<qapi::result<void>> create_file(const qapi::blockdev_create_options_file& f)
    {
        block::file_create_options o;
        o.filename = f.filename;
        o.size = f.size;
        o.preallocation = prealloc(f.preallocation);
        o.nocow = f.nocow.value_or(false);
        o.extent_size_hint = f.extent_size_hint;
        co_return co_await block::create_file(o);
    }

    /// QEMU 7.2's qemu_rbd_do_create, in its order.
    asio::awaitable<qapi::result<void>> create_rbd(const qapi::blockdev_create_options_rbd& q)
    {
        if (q.location.snapshot)
            co_return qapi::generic("Can't use snapshot name for image creation");
        if (q.encrypt)
            co_return qapi::generic("RBD image encryption is not supported by blockjobd's rbd driver");
        const std::uint64_t obj = q.cluster_size.value_or(0);
        if (q.cluster_size && ((obj - 1) & obj))
            co_return qapi::generic("obj size needs to be power of 2");
        if (q.cluster_size && obj < 4096)
            co_return qapi::generic("obj size too small");
        auto loc = q.location;
        loc.encrypt.reset();   // the image's encryption is create's own encrypt member
        auto where = block::rbd_options(loc, g_.objects());
        if (!where)
            co_return where.error();
        co_return co_await block::create_rbd(*where, q.size, obj);
    }

    asio::awaitable<qapi::result<void>> create_qcow2(job& j, const qapi::blockdev_create_options_qcow2& q)
    {
        // QEMU opens the file reference before it checks any option.
        std::shared_ptr<block::node> file;
        bool temporary = false;
        if (const auto* name = std::get_if<std::string>(&q.file)) {
            auto n = g_.lookup(*name);
            if (!n)
                co_return n.error();
            file = *n;
        } else {
            auto n = co_await g_.open(*std::get<qapi::box<qapi::blockdev_options>>(q.file), false);
            if (!n)
                co_return n.error();
            file = *n;
            temporary = true;
        }
        block::qcow2_create_options o;
        o.size = q.size;
        o.version = q.version.value_or(qapi::blockdev_qcow2_version::v3) == qapi::blockdev_qcow2_version::v2 ? 2 : 3;
        o.backing_file = q.backing_file;
        if (q.backing_fmt)
            o.backing_format = std::string(qapi::to_string(*q.backing_fmt));
        o.cluster_size = q.cluster_size.value_or(65536);
        o.preallocation = prealloc(q.preallocation);
        o.lazy_refcounts = q.lazy_refcounts.value_or(false);
        o.refcount_bits = q.refcount_bits.value_or(16);
        o.extended_l2 = q.extended_l2.value_or(false);
        o.zstd = q.compression_type.value_or(qapi::qcow2_compression_type::zlib) == qapi::qcow2_compression_type::zstd;
        auto r = co_await block::format_qcow2(*file, o, "block job '" + j.id() + "'");
        if (temporary)   // opened for the job only: it and its inline children go
            co_await g_.close(std::move(file));
        co_return r;
    }

    block::graph& g_;
    qapi::blockdev_create_options o_;
};

} // namespace

qapi::result<void> start_create(manager& m, block::graph& g, std::string job_id, qapi::blockdev_create_options opts)
{
    if (!opts.u.file && !opts.u.qcow2 && !opts.u.rbd)
        return qapi::generic("Driver does not support blockdev-create");
    job_options jo;
    jo.auto_finalize = true;
    jo.auto_dismiss = false;
    jo.block_job = false;
    auto j = m.create(std::move(job_id), job_type::create, std::make_unique<create_driver>(g, std::move(opts)), jo);
    if (!j)
        return j.error();
    m.start(**j);
    return {};
}

} // namespace bjd::jobs
