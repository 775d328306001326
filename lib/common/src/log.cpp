// SPDX-License-Identifier: MIT
#include "bjd/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/pattern_formatter.h>

#include <mutex>

namespace bjd::log {
namespace {

std::mutex mu;
spdlog::sink_ptr shared_sink;
spdlog::level::level_enum current_level = spdlog::level::info;
style current_style = style::terminal;

/// "%l" → sd-daemon priority prefix, so journald keeps levels without libsystemd's API.
class journal_priority final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override
    {
        static constexpr const char* prio[] = {"<7>", "<7>", "<6>", "<4>", "<3>", "<2>", "<6>"};
        const char* p = prio[static_cast<int>(msg.level)];
        dest.append(p, p + 3);
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<journal_priority>(); }
};

std::unique_ptr<spdlog::formatter> make_formatter(style s)
{
    auto f = std::make_unique<spdlog::pattern_formatter>();
    if (s == style::journal)
        f->add_flag<journal_priority>('*').set_pattern("%*%n: %v");
    else
        f->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %n: %v");
    return f;
}

spdlog::sink_ptr sink_locked()
{
    if (!shared_sink) {
        shared_sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
        shared_sink->set_formatter(make_formatter(current_style));
    }
    return shared_sink;
}

} // namespace

void init_logging(spdlog::level::level_enum level, style s)
{
    std::lock_guard lk(mu);
    current_level = level;
    current_style = s;
    sink_locked()->set_formatter(make_formatter(s));
    spdlog::apply_all([level](const std::shared_ptr<spdlog::logger>& l) { l->set_level(level); });
}

std::shared_ptr<spdlog::logger> get(const std::string& module)
{
    std::lock_guard lk(mu);
    if (auto l = spdlog::get(module))
        return l;
    auto l = std::make_shared<spdlog::logger>(module, sink_locked());
    l->set_level(current_level);
    spdlog::register_logger(l);
    return l;
}

} // namespace bjd::log
