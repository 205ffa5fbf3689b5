// rlay/detail/shm.hpp: writing observations into a trainer's shared memory (3.9), on Linux.
//
// A trainer on the same host may offer the memory where it keeps its batch of large
// observation leaves. The worker uses an offer only after the five checks of 3.9 pass, and
// otherwise sends frames (which the trainer always accepts). It writes the rows with pwrite
// on the open file (the same pages the trainer maps), never through a mapping of its own, so
// nothing the trainer does to the file can raise SIGBUS in the game. Elsewhere than Linux
// every offer is ignored.
#pragma once

#include <rlay/detail/leaves.hpp>
#include <rlay/spaces.hpp>
#include <rlay/value.hpp>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#define RLAY_SHARED_MEMORY 1
#endif

namespace rlay {
namespace detail {

constexpr std::size_t shm_token_bytes = 16;
constexpr std::size_t shm_header_bytes = 4096;  // token, then nothing; rows start at 4096 or later

/// Check 1: `rlay-<pid>-<16 lowercase hex digits>`, pid 1 to 7 digits with no leading zero.
inline bool segment_name_ok(const std::string& name) {
    if (name.compare(0, 5, "rlay-") != 0) return false;
    std::size_t i = 5, digits = 0;
    if (i >= name.size() || name[i] < '1' || name[i] > '9') return false;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9') { ++i; ++digits; }
    if (digits > 7 || i >= name.size() || name[i] != '-') return false;
    ++i;
    if (name.size() - i != 16) return false;
    for (; i < name.size(); ++i) {
        char c = name[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return true;
}

/// The trainers' segments this worker has opened (at most 8, open or remembered as unusable).
/// It reads and writes them with pread and pwrite, never through a mapping: a trainer (or any
/// process of this user) may shrink the file at any moment after check 3, and a write through
/// a mapping past the file's end is a SIGBUS that kills the game.
class segment_cache {
public:
    segment_cache() = default;
    segment_cache(const segment_cache&) = delete;
    segment_cache& operator=(const segment_cache&) = delete;
    ~segment_cache() { close(); }

    /// The rows of an offer this worker can write (leaf index -> one target per env), or none:
    /// then it sends frames. Call after the part's envs have stepped (check 3).
    std::optional<placement> place(const value* offer, const std::vector<leaf_info>& leaves, std::size_t k) {
#if defined(RLAY_SHARED_MEMORY)
        prune();
        if (!offer || !offer->is_map()) return std::nullopt;
        const value* name = offer->find("name");
        const value* token = offer->find("token");
        const value* offered = offer->find("leaves");
        if (!name || !name->is_str() || !token || !token->is_bin() || token->as_bin().size() != shm_token_bytes || !offered ||
            !offered->is_list()) {
            return std::nullopt;
        }
        segment* seg = open(name->as_str());
        if (!seg) return std::nullopt;
        struct stat now;
        if (::fstat(seg->fd, &now) != 0 || static_cast<std::size_t>(now.st_size) < seg->size) {  // check 3: shrunk
            drop(name->as_str());
            return std::nullopt;
        }
        char head[shm_token_bytes];
        if (::pread(seg->fd, head, shm_token_bytes, 0) != static_cast<ssize_t>(shm_token_bytes) ||
            std::memcmp(head, token->as_bin().data(), shm_token_bytes) != 0) {
            return std::nullopt;  // check 4
        }
        placement placed;
        for (const value& item : offered->as_list()) {  // check 5
            if (!item.is_list() || item.size() != 2 || !item[0].is_int() || item[0].is_negative() || !item[1].is_list()) return std::nullopt;
            std::uint64_t index = item[0].as_uint();
            if (index >= leaves.size() || placed.count(index) || item[1].size() != k) return std::nullopt;
            const leaf_info& leaf = leaves[index];
            if (leaf.text || leaf.space.type() != space::kind::box) return std::nullopt;
            std::vector<shm_row> rows;
            for (const value& offset : item[1].as_list()) {
                if (!offset.is_int() || offset.is_negative()) return std::nullopt;
                std::uint64_t at = offset.as_uint();
                if (at < shm_header_bytes || at > seg->size || leaf.row_bytes > seg->size - at) return std::nullopt;
                rows.push_back(shm_row{seg->fd, at});
            }
            placed[index] = std::move(rows);
        }
        return placed;
#else
        (void)offer; (void)leaves; (void)k;
        return std::nullopt;
#endif
    }

    /// Close a segment whose rows could not be written (it shrank, or its tmpfs is full).
    void forget(int fd) {
#if defined(RLAY_SHARED_MEMORY)
        for (auto it = open_.begin(); it != open_.end(); ++it) {
            if (it->second && it->second->fd == fd) { unmap(it); return; }
        }
#else
        (void)fd;
#endif
    }

    /// Let go of segments their trainer removed, remove those whose trainer died (no one
    /// holds their flock), and forget unusable names: at most once a second.
    void prune() {
#if defined(RLAY_SHARED_MEMORY)
        auto now = std::chrono::steady_clock::now();
        if (now - pruned_ < std::chrono::seconds(1)) return;
        pruned_ = now;
        for (auto it = open_.begin(); it != open_.end();) {
            auto here = it++;
            if (!here->second) { unmap(here); continue; }
            struct stat st;
            if (::fstat(here->second->fd, &st) != 0 || st.st_nlink == 0) { unmap(here); continue; }
            if (::flock(here->second->fd, LOCK_EX | LOCK_NB) == 0) {  // its trainer is gone; the lock is ours until close
                ::unlink(("/dev/shm/" + here->first).c_str());
                unmap(here);
            }
        }
#endif
    }

    void close() {
#if defined(RLAY_SHARED_MEMORY)
        while (!open_.empty()) unmap(open_.begin());
#endif
    }

private:
#if defined(RLAY_SHARED_MEMORY)
    struct segment {
        int fd = -1;
        std::size_t size = 0;  // at check 2
    };
    using entry = std::pair<std::string, std::optional<segment>>;

    segment* open(const std::string& name) {
        for (auto it = open_.begin(); it != open_.end(); ++it) {
            if (it->first == name) {
                open_.splice(open_.end(), open_, it);  // most recently used last
                return open_.back().second ? &*open_.back().second : nullptr;
            }
        }
        std::optional<segment> seg;
        if (segment_name_ok(name)) {  // check 1
            int fd = ::open(("/dev/shm/" + name).c_str(), O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);  // check 2
            if (fd >= 0) {
                struct stat st;
                bool ok = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid() && (st.st_mode & 077) == 0 &&
                          static_cast<std::size_t>(st.st_size) > shm_header_bytes &&
                          static_cast<long long>(st.st_blocks) * 512 >= static_cast<long long>(st.st_size);
                if (ok) seg = segment{fd, static_cast<std::size_t>(st.st_size)};
                else ::close(fd);
            }
        }
        open_.emplace_back(name, seg);
        while (open_.size() > limit) unmap(open_.begin());
        return open_.back().second ? &*open_.back().second : nullptr;
    }

    void drop(const std::string& name) {
        for (auto it = open_.begin(); it != open_.end(); ++it) {
            if (it->first == name) { unmap(it); return; }
        }
    }

    void unmap(std::list<entry>::iterator it) {
        if (it->second) ::close(it->second->fd);
        open_.erase(it);
    }

    static constexpr std::size_t limit = 8;
    std::list<entry> open_;
    std::chrono::steady_clock::time_point pruned_{};
#endif
};

}  // namespace detail
}  // namespace rlay
