// SPDX-License-Identifier: MIT
// The progress file of a job kept in --state-dir (bjd/jobs/job_state.hpp), and durable writes.
#include "bjd/jobs/job_state.hpp"

#include "bjd/file.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <optional>
#include <random>
#include <span>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace bjd::jobs {

namespace json = boost::json;

namespace {

constexpr std::string_view magic = "BJDPROG1";

qapi::error errno_error(const std::string& what, int e) { return qapi::generic(what + ": " + std::strerror(e)); }

void put_u32(std::string& out, std::uint32_t v)
{
    for (int i = 0; i < 4; ++i)
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_u64(std::string& out, std::uint64_t v)
{
    for (int i = 0; i < 8; ++i)
        out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint64_t get_le(std::string_view b, std::size_t at, int n)
{
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i)
        v |= std::uint64_t(static_cast<unsigned char>(b[at + i])) << (8 * i);
    return v;
}

/// JSON numbers above 2^53 lose nothing as strings: 64-bit values are kept as decimal strings.
json::value u64(std::uint64_t v) { return json::value(std::to_string(v)); }

bool get_u64(const json::object& o, const char* key, std::uint64_t& out)
{
    auto* v = o.if_contains(key);
    if (!v || !v->is_string())
        return false;
    const auto& s = v->as_string();
    if (s.empty())
        return false;
    std::uint64_t r = 0;
    for (char c : s) {
        if (c < '0' || c > '9')
            return false;
        r = r * 10 + static_cast<unsigned>(c - '0');
    }
    out = r;
    return true;
}

std::string dir_join(const std::string& dir, const std::string& name)
{
    return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

qapi::result<void> fsync_dir(const std::string& dir)
{
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno_error("Cannot open state directory '" + dir + "'", errno);
    int r = ::fsync(fd);
    int e = errno;
    ::close(fd);
    if (r != 0)
        return errno_error("Cannot sync state directory '" + dir + "'", e);
    return {};
}

} // namespace

std::uint32_t crc32(std::string_view data, std::uint32_t crc) noexcept
{
    static const auto table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k)
                c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    crc = ~crc;
    for (char ch : data)
        crc = table[(crc ^ static_cast<unsigned char>(ch)) & 0xff] ^ (crc >> 8);
    return ~crc;
}

std::uint64_t mirror_progress::dirty_bytes() const noexcept
{
    std::uint64_t n = chunks();
    std::uint64_t total = 0;
    for (std::uint64_t c = 0; c < n && c / 8 < bitmap.size(); ++c) {
        if (!((bitmap[c / 8] >> (c % 8)) & 1u))
            continue;
        std::uint64_t start = c * granularity;
        total += std::min(granularity, size - start);
    }
    return total;
}

qapi::result<file_identity> identify_file(const std::string& path)
{
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        return errno_error("'" + path + "'", errno);
    file_identity id;
    id.path = path;
    id.size = static_cast<std::uint64_t>(st.st_size);
    id.dev = static_cast<std::uint64_t>(st.st_dev);
    id.ino = static_cast<std::uint64_t>(st.st_ino);
    id.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    return id;
}

std::string encode_progress(const mirror_progress& p)
{
    json::object meta;
    meta["generation"] = p.generation;
    meta["job-id"] = p.job_id;
    meta["size"] = u64(p.size);
    meta["granularity"] = u64(p.granularity);
    meta["offset"] = u64(p.offset);
    meta["len"] = u64(p.len);
    meta["ready"] = p.ready;
    if (p.checkpoint)
        meta["checkpoint"] = true;
    json::array files;
    for (const auto& f : p.files) {
        json::object o;
        o["path"] = f.path;
        o["size"] = u64(f.size);
        o["dev"] = u64(f.dev);
        o["ino"] = u64(f.ino);
        o["mtime-ns"] = json::value(std::to_string(f.mtime_ns));
        files.push_back(std::move(o));
    }
    meta["files"] = std::move(files);
    std::string m = json::serialize(meta);

    std::string out(magic);
    put_u32(out, static_cast<std::uint32_t>(m.size()));
    out += m;
    put_u64(out, p.bitmap.size());
    out.append(reinterpret_cast<const char*>(p.bitmap.data()), p.bitmap.size());
    put_u32(out, crc32(out));
    return out;
}

qapi::result<mirror_progress> decode_progress(std::string_view b, std::string_view generation)
{
    auto bad = [](const std::string& why) { return qapi::generic("progress file is damaged: " + why); };
    if (b.size() < magic.size() + 4 + 8 + 4 || b.substr(0, magic.size()) != magic)
        return bad("not a blockjobd progress file");
    const std::uint32_t want_crc = static_cast<std::uint32_t>(get_le(b, b.size() - 4, 4));
    if (crc32(b.substr(0, b.size() - 4)) != want_crc)
        return bad("checksum mismatch");
    std::size_t at = magic.size();
    const std::uint64_t meta_len = get_le(b, at, 4);
    at += 4;
    if (meta_len > b.size() - at - 8 - 4)
        return bad("truncated metadata");
    boost::system::error_code ec;
    json::value mv = json::parse(b.substr(at, meta_len), ec);
    at += meta_len;
    if (ec || !mv.is_object())
        return bad("metadata is not a JSON object");
    const json::object& m = mv.as_object();
    mirror_progress p;
    auto str = [&](const char* k, std::string& out) {
        auto* v = m.if_contains(k);
        if (!v || !v->is_string())
            return false;
        out = std::string(v->as_string());
        return true;
    };
    if (!str("generation", p.generation) || !str("job-id", p.job_id) || !get_u64(m, "size", p.size) ||
        !get_u64(m, "granularity", p.granularity) || !get_u64(m, "offset", p.offset) || !get_u64(m, "len", p.len))
        return bad("metadata lacks a member");
    if (auto* r = m.if_contains("ready"); r && r->is_bool())
        p.ready = r->as_bool();
    if (auto* c = m.if_contains("checkpoint"); c && c->is_bool())
        p.checkpoint = c->as_bool();
    if (auto* f = m.if_contains("files"); f && f->is_array()) {
        for (const auto& fv : f->as_array()) {
            if (!fv.is_object())
                return bad("bad file entry");
            const auto& fo = fv.as_object();
            file_identity id;
            auto* path = fo.if_contains("path");
            std::uint64_t mt = 0;
            bool neg = false;
            std::string mts;
            if (auto* t = fo.if_contains("mtime-ns"); t && t->is_string())
                mts = std::string(t->as_string());
            if (!mts.empty() && mts[0] == '-')
                neg = true, mts.erase(0, 1);
            json::object mo;
            mo["v"] = mts;
            if (!path || !path->is_string() || !get_u64(fo, "size", id.size) || !get_u64(fo, "dev", id.dev) ||
                !get_u64(fo, "ino", id.ino) || !get_u64(mo, "v", mt))
                return bad("bad file entry");
            id.path = std::string(path->as_string());
            id.mtime_ns = neg ? -static_cast<std::int64_t>(mt) : static_cast<std::int64_t>(mt);
            p.files.push_back(std::move(id));
        }
    }
    if (p.granularity == 0 || (p.granularity & (p.granularity - 1)) != 0)
        return bad("bad granularity");
    const std::uint64_t bitmap_len = get_le(b, at, 8);
    at += 8;
    if (bitmap_len != (p.chunks() + 7) / 8 || bitmap_len != b.size() - at - 4)
        return bad("bitmap length does not match the image size");
    p.bitmap.assign(reinterpret_cast<const std::uint8_t*>(b.data() + at),
                    reinterpret_cast<const std::uint8_t*>(b.data() + at + bitmap_len));
    if (p.generation != generation)
        return qapi::generic("generation mismatch (progress file " + p.generation + ", definition " +
                             std::string(generation) + ")");
    return p;
}

qapi::result<void> write_file_atomic(const std::string& dir, const std::string& name, std::string_view data)
{
    const std::string final_path = dir_join(dir, name);
    const std::string tmp = dir_join(dir, "." + name + ".tmp");
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno_error("Cannot create '" + tmp + "'", errno);
    std::size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            return errno_error("Cannot write '" + tmp + "'", e);
        }
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0) {
        int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        return errno_error("Cannot sync '" + tmp + "'", e);
    }
    ::close(fd);
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        return errno_error("Cannot rename '" + tmp + "'", e);
    }
    return fsync_dir(dir);
}

// ---- write-intent log -------------------------------------------------------------------------

namespace {

constexpr std::string_view wil_magic = "BJDWIL01";
constexpr std::size_t wil_header = 8 + 8 + 8 + 8 + 32 + 4;
constexpr std::size_t wil_align = 4096;

} // namespace

std::uint64_t intent_record::marked() const noexcept
{
    std::uint64_t n = 0;
    for (std::uint64_t r = 0; r < regions(); ++r)
        n += test(r);
    return n;
}

std::uint64_t intent_region_size(std::uint64_t size, std::uint64_t granularity) noexcept
{
    std::uint64_t region = std::uint64_t(4) << 20;
    while (region < granularity || (size + region - 1) / region > 65536)
        region *= 2;
    return region;
}

std::size_t intent_slot_size(std::uint64_t size, std::uint64_t region) noexcept
{
    const std::uint64_t regions = region ? (size + region - 1) / region : 0;
    const std::size_t n = wil_header + (regions + 7) / 8 + 4;
    return (n + wil_align - 1) / wil_align * wil_align;
}

std::string encode_intent_slot(const intent_record& r)
{
    std::string out(wil_magic);
    put_u64(out, r.seq);
    put_u64(out, r.size);
    put_u64(out, r.region);
    std::string gen = r.generation.substr(0, 32);
    gen.resize(32, '\0');
    out += gen;
    put_u32(out, static_cast<std::uint32_t>(r.bitmap.size()));
    out.append(reinterpret_cast<const char*>(r.bitmap.data()), r.bitmap.size());
    put_u32(out, crc32(out));
    out.resize(intent_slot_size(r.size, r.region), '\0');
    return out;
}

std::string encode_intent_log(const intent_record& r)
{
    const std::string slot = encode_intent_slot(r);
    const std::string empty(slot.size(), '\0');
    return r.seq % 2 ? empty + slot : slot + empty;
}

qapi::result<intent_record> decode_intent_log(std::string_view b, std::string_view generation)
{
    auto bad = [](const std::string& why) { return qapi::generic("write-intent log is damaged: " + why); };
    if (b.size() < 2 * wil_align || b.size() % (2 * wil_align) != 0)
        return bad("wrong size (" + std::to_string(b.size()) + " bytes)");
    const std::size_t slot_size = b.size() / 2;
    std::optional<intent_record> best;
    for (int i = 0; i < 2; ++i) {
        std::string_view s = b.substr(i * slot_size, slot_size);
        if (s.substr(0, wil_magic.size()) != wil_magic)
            continue;
        const std::uint64_t bitmap_len = get_le(s, wil_header - 4, 4);
        if (bitmap_len > slot_size - wil_header - 4)
            continue;
        const std::size_t end = wil_header + bitmap_len;
        if (crc32(s.substr(0, end)) != static_cast<std::uint32_t>(get_le(s, end, 4)))
            continue;   // torn or never written
        intent_record r;
        r.seq = get_le(s, 8, 8);
        r.size = get_le(s, 16, 8);
        r.region = get_le(s, 24, 8);
        std::string_view gen = s.substr(32, 32);
        r.generation = std::string(gen.substr(0, std::min(gen.find('\0'), gen.size())));
        if (r.region < wil_align || (r.region & (r.region - 1)) != 0 || bitmap_len != (r.regions() + 7) / 8 ||
            r.seq % 2 != static_cast<std::uint64_t>(i))
            continue;
        r.bitmap.assign(reinterpret_cast<const std::uint8_t*>(s.data() + wil_header),
                        reinterpret_cast<const std::uint8_t*>(s.data() + end));
        if (!best || r.seq > best->seq)
            best = std::move(r);
    }
    if (!best)
        return bad("no valid record");
    if (best->generation != generation)
        return qapi::generic("generation mismatch (write-intent log " + best->generation + ", definition " +
                             std::string(generation) + ")");
    return std::move(*best);
}

qapi::result<void> merge_intent(mirror_progress& p, const intent_record& log)
{
    if (log.size != p.size)
        return qapi::generic("the write-intent log (" + std::to_string(log.size) + " bytes) and the checkpoint (" +
                             std::to_string(p.size) + " bytes) describe different images");
    const std::uint64_t chunks = p.chunks();
    p.bitmap.resize((chunks + 7) / 8, 0);
    for (std::uint64_t r = 0; r < log.regions(); ++r) {
        if (!log.test(r))
            continue;
        const std::uint64_t first = r * log.region / p.granularity;
        const std::uint64_t last = std::min(chunks, ((r + 1) * log.region + p.granularity - 1) / p.granularity);
        for (std::uint64_t c = first; c < last; ++c)
            p.bitmap[c / 8] = static_cast<std::uint8_t>(p.bitmap[c / 8] | (1u << (c % 8)));
    }
    return {};
}

asio::awaitable<qapi::result<void>> co_write_file_atomic(io::engine& engine, const std::string& dir,
                                                          const std::string& name, std::string_view data,
                                                          std::function<bool()> still_wanted)
{
    const std::string final_path = dir_join(dir, name);
    const std::string tmp = dir_join(dir, "." + name + ".tmp");
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        co_return errno_error("Cannot create '" + tmp + "'", errno);
    const std::string copy(data);   // the caller's bytes may go while this waits
    auto w = co_await engine.write(fd, std::as_bytes(std::span(copy.data(), copy.size())), 0);
    if (w)
        w = co_await engine.fsync(fd, false);
    ::close(fd);
    if (!w) {
        ::unlink(tmp.c_str());
        co_return errno_error("Cannot write '" + tmp + "'", w.error().value());
    }
    if (still_wanted && !still_wanted()) {
        ::unlink(tmp.c_str());
        co_return errno_error("'" + final_path + "' is no longer wanted", ECANCELED);
    }
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        co_return errno_error("Cannot rename '" + tmp + "'", e);
    }
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        co_return errno_error("Cannot open state directory '" + dir + "'", errno);
    auto d = co_await engine.fsync(dfd, false);
    ::close(dfd);
    if (!d)
        co_return errno_error("Cannot sync state directory '" + dir + "'", d.error().value());
    co_return qapi::result<void>{};
}

qapi::result<void> remove_file_durable(const std::string& dir, const std::string& name)
{
    const std::string path = dir_join(dir, name);
    if (::unlink(path.c_str()) != 0) {
        if (errno == ENOENT)
            return {};
        return errno_error("Cannot remove '" + path + "'", errno);
    }
    return fsync_dir(dir);
}

qapi::result<void> remove_files_durable(const std::string& dir, const std::vector<std::string>& names)
{
    for (const auto& name : names) {
        const std::string path = dir_join(dir, name);
        if (::unlink(path.c_str()) != 0 && errno != ENOENT)
            return errno_error("Cannot remove '" + path + "'", errno);
    }
    return fsync_dir(dir);
}

qapi::result<std::string> read_file(const std::string& path)
{
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno_error("'" + path + "'", errno);
    auto r = read_to_end(fd);
    ::close(fd);
    if (!r)
        return errno_error("'" + path + "'", r.error().value());
    return std::move(*r);
}

std::string random_generation()
{
    std::random_device rd;
    static constexpr char hex[] = "0123456789abcdef";
    std::string s;
    for (int i = 0; i < 4; ++i) {
        std::uint32_t v = rd();
        for (int k = 0; k < 8; ++k)
            s.push_back(hex[(v >> (4 * k)) & 0xf]);
    }
    return s;
}

} // namespace bjd::jobs
