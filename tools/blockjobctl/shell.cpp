// SPDX-License-Identifier: MIT
/// \file
/// The interactive shell. On a terminal, libedit's readline interface in callback mode
/// reads keys when Asio says stdin is readable, so events can be printed while a line is
/// being typed (the line is cleared, the event printed, the prompt and line redrawn).
/// Otherwise lines are read from stdin one by one. Commands run one at a time, as in
/// qmp-shell.
#include "cli.hpp"

#include "bjd/client/completion.hpp"
#include "bjd/client/format.hpp"
#include "bjd/client/shorthand.hpp"
#include "bjd/nothrow_awaitable.hpp"

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/serialize.hpp>

#include <editline/readline.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>

namespace bjd::ctl {

namespace asio = boost::asio;
namespace json = boost::json;

namespace {

constexpr const char* prompt = "(blockjobctl) ";

/// libedit's callbacks are plain functions: they reach the shell through this.
struct shell_state {
    client::schema_index index;
    std::vector<std::string> matches;
    std::optional<std::string> line;
    bool eof = false;
    bool prompt_active = false;
};
shell_state* current = nullptr;

char* next_match(const char*, int state)
{
    static std::size_t i;
    if (state == 0) {
        i = 0;
    }
    return i < current->matches.size() ? strdup(current->matches[i++].c_str()) : nullptr;
}

char** attempt_completion(const char* text, int start, int)
{
    rl_attempted_completion_over = 1;   // never fall back to file names
    std::string before(rl_line_buffer, static_cast<std::size_t>(start));
    auto c = client::complete(current->index, before, text);
    if (c.candidates.empty()) {
        return nullptr;
    }
    current->matches = std::move(c.candidates);
    rl_completion_append_character = c.append_space ? ' ' : '\0';
    return rl_completion_matches(text, next_match);
}

void on_line(char* line)
{
    if (!line) {
        current->eof = true;
        return;
    }
    current->line = line;
    std::free(line);
}

std::string history_path()
{
    const char* home = std::getenv("HOME");
    return home && *home ? std::string(home) + "/.blockjobctl_history" : std::string();
}

/// Prints text that arrived on its own (an event) without corrupting the line being typed.
void print_async(const std::string& text)
{
    if (current && current->prompt_active) {
        std::fputs("\r\033[K", stdout);
        std::fputs(text.c_str(), stdout);
        std::fflush(stdout);
        rl_forced_update_display();
    } else {
        std::fputs(text.c_str(), stdout);
        std::fflush(stdout);
    }
}

/// Runs one line; false if it was not understood (the message is printed).
asio::awaitable<void> run_line(client::connection& conn, const std::string& line)
{
    client::parsed_line p;
    try {
        p = client::parse_line(line);
    } catch (const client::shorthand_error& e) {
        std::cout << "error: " << e.what() << std::endl;
        co_return;
    }
    if (p.empty) {
        co_return;
    }
    // (Not a conditional expression: GCC 12 miscompiles co_await inside one.)
    json::object reply;
    if (p.raw) {
        reply = co_await conn.send(std::move(p.request));
    } else {
        reply = co_await conn.execute(p.command, std::move(p.arguments));
    }
    std::cout << client::pretty_json(reply) << std::endl;
}

} // namespace

asio::awaitable<int> run_shell(client::connection& conn, std::string address)
{
    auto ex = co_await asio::this_coro::executor;
    shell_state st;
    current = &st;
    struct reset_current {
        ~reset_current() { current = nullptr; }
    } reset;

    bool closed = false;
    std::string closed_why;
    conn.on_event([](const json::object& ev) { print_async(json::serialize(ev) + "\n"); });
    conn.on_closed([&](const std::string& why) {
        closed = true;
        closed_why = why;
    });

    json::object schema = co_await conn.execute("query-qmp-schema");
    if (const json::value* r = schema.if_contains("return"); r && r->is_array()) {
        st.index = client::schema_index::from_introspection(r->get_array());
    } else {
        std::cerr << "blockjobctl: no completion: query-qmp-schema failed: " << client::error_text(schema) << "\n";
    }

    if (isatty(STDIN_FILENO) != 1) {
        // Lines from a pipe or a file: no editing. Blocking reads are fine here: events
        // that arrive meanwhile are printed when the next command runs.
        std::string line;
        while (!closed && std::getline(std::cin, line)) {
            co_await run_line(conn, line);
        }
        co_return closed ? exit_usage : exit_ok;
    }

    std::cout << "Connected to " << address << ". Tab completes; Ctrl-D quits." << std::endl;
    rl_readline_name = "blockjobctl";
    rl_catch_signals = 0;
    static char breaks[] = " \t\n";
    rl_basic_word_break_characters = breaks;
    rl_completer_word_break_characters = breaks;
    rl_attempted_completion_function = attempt_completion;
    using_history();
    stifle_history(1000);
    std::string hist = history_path();
    if (!hist.empty()) {
        read_history(hist.c_str());
    }

    asio::posix::stream_descriptor in(ex, ::dup(STDIN_FILENO));
    asio::signal_set signals(ex, SIGINT);
    bool interrupted = false;
    std::function<void()> arm_signal = [&] {
        signals.async_wait([&](boost::system::error_code ec, int) {
            if (ec) {
                return;
            }
            interrupted = true;
            if (st.prompt_active) {
                // Ctrl-C at the prompt discards the line, as shells do.
                // libedit's rl_replace_line ignores an empty text, and its rl_delete_text
                // does not touch the line: replace it by a blank, which the parser skips.
                rl_replace_line(" ", 0);
                std::fputs("\n", stdout);
                rl_forced_update_display();
                interrupted = false;
            }
            arm_signal();
        });
    };
    arm_signal();

    int rc = exit_ok;
    rl_callback_handler_install(prompt, on_line);
    st.prompt_active = true;
    while (!closed && !interrupted) {
        auto [ec] = co_await in.async_wait(asio::posix::stream_descriptor::wait_read,
                                           bjd::nothrow_awaitable);
        if (ec || closed) {
            break;
        }
        rl_callback_read_char();
        if (st.eof) {
            std::fputs("\n", stdout);
            break;
        }
        if (!st.line) {
            continue;
        }
        std::string line = std::move(*st.line);
        st.line.reset();
        // The command runs with the prompt gone; events print plainly meanwhile.
        st.prompt_active = false;
        rl_callback_handler_remove();
        if (line.find_first_not_of(" \t") != std::string::npos) {
            add_history(line.c_str());
        }
        try {
            co_await run_line(conn, line);
        } catch (const client::client_error& e) {
            std::cerr << "blockjobctl: " << e.what() << "\n";
            closed = true;
            break;
        }
        if (closed || interrupted) {
            break;
        }
        rl_callback_handler_install(prompt, on_line);
        st.prompt_active = true;
    }
    if (st.prompt_active) {
        rl_callback_handler_remove();
        st.prompt_active = false;
    }
    if (!hist.empty()) {
        write_history(hist.c_str());
    }
    signals.cancel();
    conn.on_event(nullptr);
    conn.on_closed(nullptr);
    if (closed) {
        std::cerr << "blockjobctl: " << (closed_why.empty() ? "connection closed" : closed_why) << "\n";
        rc = exit_usage;
    } else if (interrupted) {
        rc = 130;
    }
    co_return rc;
}

} // namespace bjd::ctl
