// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// What a mirror job leaves in `--state-dir` when the daemon stops cleanly, so that the next
/// start carries on where it stopped: the job's dirty bitmap (what is left to copy, one bit per
/// granularity chunk) and its progress counters, tagged with the generation of the job's
/// definition file and the identity of the images it copies. docs/job-state.md describes the
/// directory as a whole; this is the binary progress file and the atomic file writes.
///
/// Progress file layout (all integers little-endian):
///   "BJDPROG1"                       8 bytes, magic and version
///   u32 meta_len, meta               JSON object (progress_meta below)
///   u64 bitmap_len, bitmap           ceil(chunks / 8) bytes, bit i of byte j is chunk 8j+i
///   u32 crc32                        of everything before it (zlib's polynomial)
/// A file that is short, has a wrong magic, CRC or bitmap length, or names another generation
/// is rejected with a reason; the caller then falls back to a full copy. The same layout serves
/// the periodic checkpoint `<job-id>.ckpt` (meta member "checkpoint": true).
///
/// Write-intent log `<job-id>.wil` (after kill -9, docs/job-state.md): two slots of equal size
/// (a multiple of 4096 bytes); record `seq` lives in slot `seq % 2`, so that a torn write can
/// only damage the older record. A slot:
///   "BJDWIL01"                       8 bytes
///   u64 seq, u64 image size, u64 region size
///   32 bytes generation (ASCII)
///   u32 bitmap_len, bitmap           ceil(regions / 8) bytes, 1 = writes may have changed it
///   u32 crc32                        of the slot's bytes before it; zero padding follows
/// The valid slot with the higher seq is the log's content.
#include "bjd/io/engine.hpp"
#include "bjd/qapi/error.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::jobs {

namespace asio = boost::asio;

/// What the state dir records about one image file, to tell whether it changed while the
/// daemon was down: a different size, inode or modification time means it did.
struct file_identity {
    std::string path;
    std::uint64_t size = 0;
    std::uint64_t dev = 0;
    std::uint64_t ino = 0;
    std::int64_t mtime_ns = 0;
    friend bool operator==(const file_identity&, const file_identity&) = default;
};

/// The identity of `path` now, or the errno text ("No such file or directory").
qapi::result<file_identity> identify_file(const std::string& path);

/// A mirror's progress at a clean stop.
struct mirror_progress {
    std::string generation;    ///< the definition file's generation this belongs to
    std::string job_id;
    std::uint64_t size = 0;          ///< source size in bytes
    std::uint64_t granularity = 0;   ///< bytes per bitmap bit
    std::uint64_t offset = 0;        ///< progress: bytes done (query-jobs current-progress)
    std::uint64_t len = 0;           ///< progress: total (query-jobs total-progress)
    bool ready = false;              ///< had reached READY
    bool checkpoint = false;         ///< a periodic checkpoint (`.ckpt`), not a clean stop's file
    std::vector<file_identity> files;   ///< the images, as they were after the stop
    /// One bit per chunk, ceil(size / granularity) bits, 1 = still to copy.
    std::vector<std::uint8_t> bitmap;

    std::uint64_t chunks() const noexcept { return granularity ? (size + granularity - 1) / granularity : 0; }
    /// Bytes still to copy according to `bitmap` (the last chunk may be short).
    std::uint64_t dirty_bytes() const noexcept;
};

/// The progress file's bytes.
std::string encode_progress(const mirror_progress& p);
/// Parses a progress file; `generation`: the one the definition file names (a mismatch is an
/// error: "generation mismatch (…)"). Errors say what is wrong, for the log and query-jobs.
qapi::result<mirror_progress> decode_progress(std::string_view bytes, std::string_view generation);

/// The write-intent log's content: which regions writes may have changed since the checkpoint.
struct intent_record {
    std::uint64_t seq = 0;
    std::string generation;
    std::uint64_t size = 0;     ///< image size in bytes
    std::uint64_t region = 0;   ///< bytes per bit (a power of two)
    std::vector<std::uint8_t> bitmap;

    std::uint64_t regions() const noexcept { return region ? (size + region - 1) / region : 0; }
    bool test(std::uint64_t r) const noexcept { return (bitmap[r / 8] >> (r % 8)) & 1u; }
    void set(std::uint64_t r) noexcept { bitmap[r / 8] = static_cast<std::uint8_t>(bitmap[r / 8] | (1u << (r % 8))); }
    std::uint64_t marked() const noexcept;   ///< regions set
};

/// The region size for an image of `size` bytes copied at `granularity`: 4 MiB, doubled until
/// the log has at most 65536 regions (an 8 KiB bitmap: above 256 GiB), never below `granularity`.
std::uint64_t intent_region_size(std::uint64_t size, std::uint64_t granularity) noexcept;
/// Bytes of one slot for `size` and `region` (a multiple of 4096).
std::size_t intent_slot_size(std::uint64_t size, std::uint64_t region) noexcept;
/// One slot's bytes, padded to intent_slot_size.
std::string encode_intent_slot(const intent_record& r);
/// A whole log file holding `r` in slot `r.seq % 2` and an invalid (zero) other slot.
std::string encode_intent_log(const intent_record& r);
/// The log's content: the valid slot with the higher seq. Errors: "write-intent log is
/// damaged: …", "generation mismatch (…)".
qapi::result<intent_record> decode_intent_log(std::string_view bytes, std::string_view generation);
/// After a crash: `p` (a checkpoint) gains every chunk of a marked region of `log`. Errors when
/// the two describe different images (size).
qapi::result<void> merge_intent(mirror_progress& p, const intent_record& log);

/// The file names of job `id`'s periodic checkpoint and write-intent log in the state dir.
inline std::string checkpoint_file_name(const std::string& id) { return id + ".ckpt"; }
inline std::string intent_log_file_name(const std::string& id) { return id + ".wil"; }

/// zlib's CRC-32 of `data`.
std::uint32_t crc32(std::string_view data, std::uint32_t crc = 0) noexcept;

/// Writes `data` to `dir`/`name` atomically: a temporary file in `dir`, fsync, rename over the
/// name, fsync of the directory. On failure the old file (if any) is left as it was and the
/// error says why.
qapi::result<void> write_file_atomic(const std::string& dir, const std::string& name, std::string_view data);
/// write_file_atomic with the writes and syncs through `engine`, off the event loop. When
/// `still_wanted` is given and says no once the data is durable, the temporary file goes and
/// the name is left alone (ECANCELED): the file's owner went away meanwhile.
asio::awaitable<qapi::result<void>> co_write_file_atomic(io::engine& engine, const std::string& dir,
                                                          const std::string& name, std::string_view data,
                                                          std::function<bool()> still_wanted = {});
/// Removes `dir`/`name` (absent is fine) and fsyncs the directory.
qapi::result<void> remove_file_durable(const std::string& dir, const std::string& name);
/// Removes each of `names` from `dir` (absent is fine), then fsyncs the directory once. Stops
/// at the first failure, which it returns.
qapi::result<void> remove_files_durable(const std::string& dir, const std::vector<std::string>& names);
/// The whole file, or the errno text.
qapi::result<std::string> read_file(const std::string& path);
/// A fresh random 128-bit identifier as 32 hex digits.
std::string random_generation();

} // namespace bjd::jobs
