// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// `box<T>`: a copyable owning pointer, used by generated code for recursive members and for
/// the object branches of alternates (schemas/README.md).
#include <memory>
#include <utility>

namespace bjd::qapi {

/// Always holds a T (default-constructed unless given one); copies deep-copy. A moved-from
/// box may only be assigned to or destroyed. T may be incomplete where box<T> is declared.
template <class T>
class box {
public:
    box() : p_(std::make_unique<T>()) {}
    box(T v) : p_(std::make_unique<T>(std::move(v))) {}   // NOLINT: implicit on purpose
    box(const box& o) : p_(o.p_ ? std::make_unique<T>(*o.p_) : nullptr) {}
    box(box&&) noexcept = default;
    box& operator=(const box& o)
    {
        if (this != &o)
            p_ = o.p_ ? std::make_unique<T>(*o.p_) : nullptr;
        return *this;
    }
    box& operator=(box&&) noexcept = default;
    ~box() = default;

    T& operator*() noexcept { return *p_; }
    const T& operator*() const noexcept { return *p_; }
    T* operator->() noexcept { return p_.get(); }
    const T* operator->() const noexcept { return p_.get(); }
    T& get() noexcept { return *p_; }
    const T& get() const noexcept { return *p_; }

    friend bool operator==(const box& a, const box& b) { return *a.p_ == *b.p_; }

private:
    std::unique_ptr<T> p_;
};

} // namespace bjd::qapi
