// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// QMP `transaction`: several graph changes that happen together or not at all (QEMU 7.2's
/// qmp_transaction and its TransactionActionDrv). Main loop only.
#include "bjd/qapi/error.hpp"

#include <boost/asio/awaitable.hpp>

#include <memory>
#include <vector>

namespace bjd::block {

namespace asio = boost::asio;

/// One action. `prepare` makes the change in a way that `abort` can undo. Once every action
/// prepared, each is committed in order; when one fails, the ones before it are aborted,
/// newest first, and nothing is committed.
class transaction_action {
public:
    virtual ~transaction_action() = default;
    virtual asio::awaitable<qapi::result<void>> prepare() = 0;
    /// Cannot fail: what is left to do may only be logged.
    virtual asio::awaitable<void> commit() { co_return; }
    virtual void abort() {}
};

class io_gate;

/// Runs `actions` as one transaction, inside a drained section of `gate` (QEMU drains every
/// node for a transaction): requests from outside wait until it is over, so that all actions
/// act at one point in time. The error is the first failing action's.
asio::awaitable<qapi::result<void>> run_transaction(io_gate& gate,
                                                    std::vector<std::unique_ptr<transaction_action>> actions);

} // namespace bjd::block
