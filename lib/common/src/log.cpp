// SPDX-License-Identifier: MIT
#include "bjd/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/pattern_formatter.h>

#include <systemd/sd-journal.h>

#include <sys/uio.h>
#include <unistd.h>

#include <mutex>
#include <vector>

namespace bjd::log {
namespace {

std::mutex mu;
spdlog::sink_ptr shared_sink;
spdlog::level::level_enum current_level = spdlog::level::info;
style current_style = style::terminal;
bool journald_here = false;   // journal style and journald's native socket exists

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
    // sd_journal_send succeeds silently when journald is absent, so look for it up front.
    journald_here = s == style::journal && ::access("/run/systemd/journal/socket", W_OK) == 0;
    sink_locked()->set_formatter(make_formatter(s));
    spdlog::apply_all([level](const std::shared_ptr<spdlog::logger>& l) { l->set_level(level); });
}

std::string reopen()
{
    std::lock_guard lk(mu);
    sink_locked()->flush();
    if (current_style != style::journal)
        return "no log file to reopen: logging to stderr (flushed)";
    journald_here = ::access("/run/systemd/journal/socket", W_OK) == 0;
    return journald_here ? "no log file to reopen: logging to stderr and journald's socket (found again)"
                         : "no log file to reopen: logging to stderr (flushed); journald's socket is absent";
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

void on_failure::operator()(std::exception_ptr e) const
{
    if (!e)
        return;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        get(std::string(module_))->log(level_, "{} failed: {}", what_, ex.what());
    } catch (...) {
        get(std::string(module_))->log(level_, "{} failed", what_);
    }
}

void with_fields(spdlog::level::level_enum level, const std::string& module, std::string_view text,
                 std::initializer_list<field> fields)
{
    auto logger = get(module);
    if (!logger->should_log(level))
        return;
    bool native;
    {
        std::lock_guard lk(mu);
        native = journald_here;
    }
    if (native) {
        static constexpr int prio[] = {7, 7, 6, 4, 3, 2, 6};
        std::vector<std::string> lines;
        lines.reserve(fields.size() + 4);
        lines.push_back("MESSAGE=" + module + ": " + std::string(text));
        lines.push_back("PRIORITY=" + std::to_string(prio[static_cast<int>(level)]));
        lines.push_back("SYSLOG_IDENTIFIER=blockjobd");
        lines.push_back("BJD_MODULE=" + module);
        for (const field& f : fields)
            lines.push_back(std::string(f.name) + "=" + std::string(f.value));
        std::vector<iovec> iov;
        iov.reserve(lines.size());
        for (std::string& l : lines)
            iov.push_back({l.data(), l.size()});
        if (::sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) >= 0)
            return;
    }
    // No journald (a container, a terminal with --log-format journal): the stream.
    std::string line(text);
    for (const field& f : fields) {
        line += " [";
        line.append(f.name);
        line += '=';
        line.append(f.value);
        line += ']';
    }
    logger->log(level, line);
}

} // namespace bjd::log
