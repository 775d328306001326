// SPDX-License-Identifier: MIT
// QOM object commands: object-add, object-del. Glue over bjd::crypto::registry (lib/crypto).
#include "bjd/crypto/objects.hpp"
#include "bjd/qapi/commands.hpp"
#include "bjd/qmp/context.hpp"

namespace bjd::qapi {

boost::asio::awaitable<result<void>> qmp_object_add(qmp::context& ctx, object_options args)
{
    if (!ctx.objects)
        co_return generic("Objects are not available");
    co_return ctx.objects->add(args);
}

boost::asio::awaitable<result<void>> qmp_object_del(qmp::context& ctx, object_del_args args)
{
    if (!ctx.objects)
        co_return generic("Objects are not available");
    co_return ctx.objects->del(args.id);
}

} // namespace bjd::qapi
