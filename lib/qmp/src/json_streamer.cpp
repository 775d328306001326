// SPDX-License-Identifier: MIT
/// \file
/// The QMP JSON lexer and message framer: bytes in, complete messages (or errors) out.
///
/// The lexer is a character state machine with one character of lookahead, like QEMU's
/// json-lexer: a character that ends a number or keyword is re-examined in the start state; a
/// character with no transition makes the token so far (including that character) an error
/// token, after which input is skipped until a resynchronisation character. The framer counts
/// braces and brackets and hands the collected tokens to the parser (json_parser.cpp).
#include "bjd/qmp/json.hpp"

#include "json_token.hpp"

#include <utility>

namespace bjd::qmp {
namespace {

using detail::json_token;
using detail::token_type;

enum class lex_state {
    start, recovery, dq_string, dq_escape, sq_string, sq_escape, zero, exp_digits, exp_sign,
    exp_e, mantissa, mantissa_digits, digits, sign, keyword,
};

/// What a character does in a state.
enum class action {
    next,        ///< consume and move to `state`
    emit,        ///< consume, emit token `type`, back to start
    emit_ahead,  ///< emit token `type` without consuming; re-examine the char in start
    skip,        ///< consume, drop the token text (whitespace; recovery)
    resync,      ///< leave recovery without consuming; re-examine the char in start
    error,       ///< consume, emit an error token, enter recovery
};

struct step {
    action act;
    lex_state state = lex_state::start;
    token_type type = token_type::lcurly;
};

bool is_digit(unsigned c) { return c >= '0' && c <= '9'; }

step transition(lex_state s, unsigned c)
{
    using A = action;
    using S = lex_state;
    using T = token_type;
    switch (s) {
    case S::recovery:
        if ((c < 0x20 && c != '\t') || c >= 0xFE || c == '[' || c == ']' || c == '{' || c == '}' ||
            c == ':' || c == ',') {
            return {A::resync};
        }
        return {A::skip, S::recovery};
    case S::dq_escape:
        return c >= 0x20 && c <= 0xFD ? step{A::next, S::dq_string} : step{A::error};
    case S::sq_escape:
        return c >= 0x20 && c <= 0xFD ? step{A::next, S::sq_string} : step{A::error};
    case S::dq_string:
    case S::sq_string: {
        const bool dq = s == S::dq_string;
        if (c == (dq ? '"' : '\'')) {
            return {A::emit, S::start, T::string};
        }
        if (c == '\\') {
            return {A::next, dq ? S::dq_escape : S::sq_escape};
        }
        return c >= 0x20 && c <= 0xFD ? step{A::next, s} : step{A::error};
    }
    case S::zero:
        if (is_digit(c)) {
            return {A::error};
        }
        if (c == '.') {
            return {A::next, S::mantissa};
        }
        return {A::emit_ahead, S::start, T::integer};
    case S::exp_digits:
        return is_digit(c) ? step{A::next, S::exp_digits} : step{A::emit_ahead, S::start, T::float_};
    case S::exp_sign:
        return is_digit(c) ? step{A::next, S::exp_digits} : step{A::error};
    case S::exp_e:
        if (c == '-' || c == '+') {
            return {A::next, S::exp_sign};
        }
        return is_digit(c) ? step{A::next, S::exp_digits} : step{A::error};
    case S::mantissa_digits:
        if (is_digit(c)) {
            return {A::next, S::mantissa_digits};
        }
        if (c == 'e' || c == 'E') {
            return {A::next, S::exp_e};
        }
        return {A::emit_ahead, S::start, T::float_};
    case S::mantissa:
        return is_digit(c) ? step{A::next, S::mantissa_digits} : step{A::error};
    case S::digits:
        if (is_digit(c)) {
            return {A::next, S::digits};
        }
        if (c == 'e' || c == 'E') {
            return {A::next, S::exp_e};
        }
        if (c == '.') {
            return {A::next, S::mantissa};
        }
        return {A::emit_ahead, S::start, T::integer};
    case S::sign:
        if (c == '0') {
            return {A::next, S::zero};
        }
        return c >= '1' && c <= '9' ? step{A::next, S::digits} : step{A::error};
    case S::keyword:
        return c >= 'a' && c <= 'z' ? step{A::next, S::keyword} : step{A::emit_ahead, S::start, T::keyword};
    case S::start:
        switch (c) {
        case '"': return {A::next, S::dq_string};
        case '\'': return {A::next, S::sq_string};
        case '0': return {A::next, S::zero};
        case '-': return {A::next, S::sign};
        case '{': return {A::emit, S::start, T::lcurly};
        case '}': return {A::emit, S::start, T::rcurly};
        case '[': return {A::emit, S::start, T::lsquare};
        case ']': return {A::emit, S::start, T::rsquare};
        case ',': return {A::emit, S::start, T::comma};
        case ':': return {A::emit, S::start, T::colon};
        case ' ': case '\t': case '\r': case '\n': return {A::skip, S::start};
        default: break;
        }
        if (c >= '1' && c <= '9') {
            return {A::next, S::digits};
        }
        if (c >= 'a' && c <= 'z') {
            return {A::next, S::keyword};
        }
        return {A::error};
    }
    return {A::error};
}

} // namespace

struct json_streamer::impl {
    lex_state state = lex_state::start;
    std::string token;

    std::vector<json_token> tokens;
    std::size_t token_size = 0;
    int brace_count = 0;
    int bracket_count = 0;

    std::vector<json_message>* out = nullptr;

    void reset_message()
    {
        tokens.clear();
        token_size = 0;
        brace_count = 0;
        bracket_count = 0;
    }

    void emit_error(std::string desc)
    {
        reset_message();
        out->push_back({std::nullopt, std::move(desc)});
    }

    void parse_and_emit()
    {
        json_message m;
        boost::json::value v;
        if (detail::parse_tokens(tokens, v, m.error)) {
            m.value = std::move(v);
        }
        reset_message();
        out->push_back(std::move(m));
    }

    /// QEMU's json_message_process_token. `partial` marks an over-long token cut by the lexer.
    void process(token_type type, bool partial = false)
    {
        if (!partial) {
            switch (type) {
            case token_type::lcurly: ++brace_count; break;
            case token_type::rcurly: --brace_count; break;
            case token_type::lsquare: ++bracket_count; break;
            case token_type::rsquare: --bracket_count; break;
            default: break;
            }
        }
        if (token_size + token.size() + 1 > json_max_token_size) {
            emit_error("JSON token size limit exceeded");
            return;
        }
        if (tokens.size() + 1 > json_max_token_count) {
            emit_error("JSON token count limit exceeded");
            return;
        }
        if (bracket_count + brace_count > json_max_nesting) {
            emit_error("JSON nesting depth limit exceeded");
            return;
        }
        token_size += token.size();
        tokens.push_back({type, token});
        if ((brace_count > 0 || bracket_count > 0) && brace_count >= 0 && bracket_count >= 0) {
            return;
        }
        parse_and_emit();
    }

    void lexical_error()
    {
        emit_error("JSON parse error, stray '" + token + "'");
    }

    void feed_char(unsigned char c)
    {
        for (;;) {
            step st = transition(state, c);
            switch (st.act) {
            case action::next:
                token.push_back(static_cast<char>(c));
                state = st.state;
                break;
            case action::emit:
                token.push_back(static_cast<char>(c));
                process(st.type);
                token.clear();
                state = lex_state::start;
                break;
            case action::emit_ahead:
                process(st.type);
                token.clear();
                state = lex_state::start;
                continue;   // re-examine c
            case action::skip:
                token.clear();
                state = st.state;
                break;
            case action::resync:
                token.clear();
                state = lex_state::start;
                continue;
            case action::error:
                token.push_back(static_cast<char>(c));
                lexical_error();
                token.clear();
                state = lex_state::recovery;
                break;
            }
            break;
        }
        if (token.size() > json_max_token_size) {
            process(token_type::string, true);
            token.clear();
            state = lex_state::start;
        }
    }

    void flush()
    {
        // Like feeding a NUL that is never consumed: finish or fail the pending token.
        while (state != lex_state::start) {
            step st = transition(state, 0);
            switch (st.act) {
            case action::emit:
            case action::emit_ahead:
                process(st.type);
                token.clear();
                state = lex_state::start;
                break;
            case action::error:
                lexical_error();
                token.clear();
                state = lex_state::recovery;
                break;
            default:
                token.clear();
                state = lex_state::start;
                break;
            }
        }
        if (!tokens.empty()) {
            parse_and_emit();
        }
    }
};

json_streamer::json_streamer() : impl_(new impl) {}
json_streamer::~json_streamer() { delete impl_; }
json_streamer::json_streamer(json_streamer&& o) noexcept : impl_(std::exchange(o.impl_, nullptr)) {}
json_streamer& json_streamer::operator=(json_streamer&& o) noexcept
{
    std::swap(impl_, o.impl_);
    return *this;
}

void json_streamer::feed(std::string_view bytes, std::vector<json_message>& out)
{
    impl_->out = &out;
    for (char c : bytes) {
        impl_->feed_char(static_cast<unsigned char>(c));
    }
    impl_->out = nullptr;
}

void json_streamer::flush(std::vector<json_message>& out)
{
    impl_->out = &out;
    impl_->flush();
    impl_->out = nullptr;
}

std::vector<json_message> json_streamer::feed(std::string_view bytes)
{
    std::vector<json_message> out;
    feed(bytes, out);
    return out;
}

std::vector<json_message> parse_json_messages(std::string_view text)
{
    json_streamer s;
    std::vector<json_message> out;
    s.feed(text, out);
    s.flush(out);
    return out;
}

} // namespace bjd::qmp
