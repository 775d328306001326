// SPDX-License-Identifier: MIT
#include "bjd/block/transaction.hpp"

#include "bjd/block/io_gate.hpp"

namespace bjd::block {

asio::awaitable<qapi::result<void>> run_transaction(io_gate& gate,
                                                    std::vector<std::unique_ptr<transaction_action>> actions)
{
    const auto drained = co_await gate.drain();
    std::size_t prepared = 0;
    for (; prepared < actions.size(); ++prepared) {
        if (auto r = co_await actions[prepared]->prepare(); !r) {
            while (prepared-- > 0)
                actions[prepared]->abort();
            co_return r.error();
        }
    }
    for (auto& a : actions)
        co_await a->commit();
    co_return qapi::result<void>{};
}

} // namespace bjd::block
