// SPDX-License-Identifier: MIT
#include "bjd/block/transaction.hpp"

namespace bjd::block {

asio::awaitable<qapi::result<void>> run_transaction(std::vector<std::unique_ptr<transaction_action>> actions)
{
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
