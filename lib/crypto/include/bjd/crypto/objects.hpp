// SPDX-License-Identifier: MIT
#pragma once
/// \file
/// User-creatable objects (QEMU's QOM objects made by --object and object-add) that the NBD
/// server and client use: secrets, TLS credentials (x509 and PSK) and simple authorization.
///
/// The registry lives on the main loop and is owned by the daemon. Users (an NBD server, an
/// NBD client node) hold a shared_ptr to what they looked up, so object-del removes the id
/// at once, as in QEMU 7.2, while a running server keeps its credentials until it stops.
#include "bjd/qapi/error.hpp"

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bjd::qapi { struct object_options; }

namespace bjd::crypto {

enum class object_kind { secret, tls_creds_x509, tls_creds_psk, authz_simple };

/// "secret", "tls-creds-x509", ... (QEMU's type names).
const char* to_string(object_kind k) noexcept;

class object {
public:
    virtual ~object() = default;
    const std::string& id() const noexcept { return id_; }
    virtual object_kind kind() const noexcept = 0;

protected:
    explicit object(std::string id) : id_(std::move(id)) {}

private:
    std::string id_;
};

/// A secret: its bytes are never logged or returned over QMP.
class secret final : public object {
public:
    secret(std::string id, std::string value) : object(std::move(id)), value_(std::move(value)) {}
    object_kind kind() const noexcept override { return object_kind::secret; }
    const std::string& value() const noexcept { return value_; }

private:
    std::string value_;
};

enum class endpoint { client, server };

class tls_creds_data;   // GnuTLS credentials (tls_creds.cpp)

/// tls-creds-x509 or tls-creds-psk, loaded from its directory when created.
class tls_creds final : public object {
public:
    tls_creds(std::string id, object_kind k, std::unique_ptr<tls_creds_data> d);
    ~tls_creds() override;
    object_kind kind() const noexcept override { return kind_; }
    bool is_x509() const noexcept { return kind_ == object_kind::tls_creds_x509; }
    crypto::endpoint endpoint() const noexcept;
    bool verify_peer() const noexcept;
    /// The GnuTLS priority string sessions use ("NORMAL" unless `priority` was given; PSK
    /// adds its key exchanges, as QEMU does).
    const std::string& priority() const noexcept;
    const tls_creds_data& data() const noexcept { return *data_; }

private:
    object_kind kind_;
    std::unique_ptr<tls_creds_data> data_;
};

/// authz-simple: allows exactly one identity.
class authz_simple final : public object {
public:
    authz_simple(std::string id, std::string identity) : object(std::move(id)), identity_(std::move(identity)) {}
    object_kind kind() const noexcept override { return object_kind::authz_simple; }
    bool allows(std::string_view identity) const { return identity == identity_; }
    const std::string& identity() const noexcept { return identity_; }

private:
    std::string identity_;
};

class registry {
public:
    registry() = default;
    registry(const registry&) = delete;
    registry& operator=(const registry&) = delete;

    /// object-add / --object, with QEMU 7.2's checks in its order: the id ("Parameter 'id'
    /// expects an identifier"), the properties ("Property 'secret.loaded' is not writable"),
    /// a duplicate id ("attempt to add duplicate property 'X' to object (type 'container')"),
    /// then loading ("Either 'file' or 'data' must be provided", "Unable to access
    /// credentials D/ca-cert.pem: No such file or directory", ...).
    qapi::result<void> add(const qapi::object_options& opts);
    /// object-del: "object 'X' not found".
    qapi::result<void> del(std::string_view id);

    std::shared_ptr<object> find(std::string_view id) const;
    /// The NBD server's and client's lookup: "No TLS credentials with id 'X'", "Object with
    /// id 'X' is not TLS credentials", "Expected TLS credentials for a server endpoint".
    qapi::result<std::shared_ptr<tls_creds>> tls_creds_for(std::string_view id, endpoint want) const;
    /// tls-authz at handshake time: null when there is no authz-simple with that id.
    std::shared_ptr<authz_simple> find_authz(std::string_view id) const;
    std::vector<std::string> ids() const;

private:
    std::vector<std::shared_ptr<object>> objects_;   // creation order
};

// ---- building blocks (also used by unit tests) -------------------------------------------

/// A secret's value from `data` or `file`, in `format` (raw or base64).
qapi::result<std::string> load_secret(const std::optional<std::string>& data, const std::optional<std::string>& file,
                                      bool base64);

/// Loads x509 credentials from `dir` (QEMU's file names). `key_password`, when set, is
/// called once the files are found, for the password of an encrypted private key.
qapi::result<std::unique_ptr<tls_creds_data>> load_x509(
    const std::string& dir, endpoint ep, bool verify_peer, std::optional<std::string> priority,
    const std::function<qapi::result<std::string>()>& key_password = {});
/// Loads PSK credentials from `dir`/keys.psk; a client uses the line for `username`
/// (default "qemu").
qapi::result<std::unique_ptr<tls_creds_data>> load_psk(const std::string& dir, endpoint ep,
                                                       std::optional<std::string> priority,
                                                       std::optional<std::string> username);

} // namespace bjd::crypto
