// SPDX-License-Identifier: MIT
#include "copy/chain_job.hpp"

#include "bjd/block/create.hpp"
#include "bjd/block/driver.hpp"

namespace bjd::jobs::detail {

chain_job::chain_job(block::graph& g, asio::any_io_executor ex, std::string_view type)
    : copy_driver(std::move(ex)), graph_(g), type_(type)
{
}

void chain_job::clean(job& j)
{
    leave_graph();
    if (reopened_) {
        // Back to read-only, as it was before the job (QEMU's stream_clean, commit_clean).
        restore_read_only(ex_, std::move(reopened_), type_ + " '" + j.id() + "'");
        reopened_.reset();
    }
}

qapi::result<job_nodes*> chain_job::enter_graph(job& j, std::shared_ptr<block::node> filter, block::node& below)
{
    if (auto r = insert_filter(graph_, filter, below); !r)
        return r.error();
    filter_ = std::move(filter);
    guests_.watch(filter_, type_ + " job '" + j.id() + "'");
    limiter_.set_speed(j.speed());
    return &nodes_.emplace(type_ + " job '" + j.id() + "'", type_);
}

void chain_job::leave_graph()
{
    nodes_.reset();
    guests_.watch(nullptr, {});
    if (filter_)
        remove_filter(graph_, ex_, std::exchange(filter_, nullptr), type_);
}

asio::awaitable<qapi::result<void>> chain_job::write_chain(job& j, block::node& data, block::node* image,
                                                           const block::node* backing,
                                                           const std::optional<std::string>& backing_file)
{
    if (auto f = co_await data.flush(); !f) {
        j.set_error_errno(f.error().value());
        co_return qapi::generic(strerror_text(f.error()));
    }
    if (!image || !block::qcow2_info(*image))
        co_return qapi::result<void>{};
    std::string file, fmt;
    if (backing) {
        file = backing_file ? *backing_file : backing->filename();
        fmt = std::string(backing->driver());
    }
    if (auto h = co_await block::qcow2_change_backing_file(*image, file, fmt); !h) {
        j.set_error_errno(h.error().value());
        co_return qapi::generic(strerror_text(h.error()));
    }
    co_return qapi::result<void>{};
}

} // namespace bjd::jobs::detail
