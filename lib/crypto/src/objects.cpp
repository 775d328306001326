// SPDX-License-Identifier: MIT
// The object registry and secrets: object-add / object-del with QEMU 7.2's checks and texts.
#include "bjd/crypto/objects.hpp"

#include "tls_creds_data.hpp"

#include "bjd/file.hpp"
#include "bjd/id.hpp"
#include "bjd/log.hpp"
#include "bjd/qapi/types.hpp"

#include <gnutls/gnutls.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include <fcntl.h>
#include <unistd.h>

namespace bjd::crypto {

namespace {

/// GLib's g_file_get_contents texts, which QEMU's secret prints after "Unable to read F: ".
qapi::result<std::string> read_whole_file(const std::string& path)
{
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qapi::generic("Failed to open file \u201C" + path + "\u201D: " + std::strerror(errno));
    auto r = read_to_end(fd);
    ::close(fd);
    if (!r)
        return qapi::generic("Error reading file \u201C" + path + "\u201D: " + std::strerror(r.error().value()));
    return std::move(*r);
}

qapi::result<std::string> base64_decode(const std::string& in)
{
    // QEMU's qbase64_decode: only the alphabet, '=' and newlines; the rest is GLib's decoder.
    for (unsigned char c : in)
        if (!std::isalnum(c) && c != '+' && c != '/' && c != '=' && c != '\n' && c != '\r')
            return qapi::generic("Base64 data contains invalid characters");
    std::string clean;
    for (char c : in)
        if (c != '\n' && c != '\r')
            clean.push_back(c);
    if (clean.empty())
        return std::string();
    gnutls_datum_t src{reinterpret_cast<unsigned char*>(clean.data()), unsigned(clean.size())};
    gnutls_datum_t out{};
    if (gnutls_base64_decode2(&src, &out) < 0)
        return qapi::generic("Base64 data contains invalid characters");
    std::string r(reinterpret_cast<const char*>(out.data), out.size);
    gnutls_memset(out.data, 0, out.size);
    gnutls_free(out.data);
    return r;
}

template <class T>
qapi::result<void> refuse_loaded(const T& p, const char* type)
{
    if (p.loaded)
        return qapi::generic(std::string("Property '") + type + ".loaded' is not writable");
    return {};
}

crypto::endpoint to_endpoint(const std::optional<qapi::q_crypto_tls_creds_endpoint>& e)
{
    return e && *e == qapi::q_crypto_tls_creds_endpoint::server ? endpoint::server : endpoint::client;
}

} // namespace

const char* to_string(object_kind k) noexcept
{
    switch (k) {
    case object_kind::secret: return "secret";
    case object_kind::tls_creds_x509: return "tls-creds-x509";
    case object_kind::tls_creds_psk: return "tls-creds-psk";
    case object_kind::authz_simple: return "authz-simple";
    }
    return "object";
}

tls_creds::tls_creds(std::string id, object_kind k, std::unique_ptr<tls_creds_data> d)
    : object(std::move(id)), kind_(k), data_(std::move(d))
{
}

tls_creds::~tls_creds() = default;

crypto::endpoint tls_creds::endpoint() const noexcept { return data_->ep; }
bool tls_creds::verify_peer() const noexcept { return data_->verify_peer; }
const std::string& tls_creds::priority() const noexcept { return data_->priority; }

qapi::result<std::string> load_secret(const std::optional<std::string>& data, const std::optional<std::string>& file,
                                      bool base64)
{
    if (data && file)
        return qapi::generic("'file' and 'data' are mutually exclusive");
    if (!data && !file)
        return qapi::generic("Either 'file' or 'data' must be provided");
    std::string raw;
    if (file) {
        auto r = read_whole_file(*file);
        if (!r)
            return qapi::generic("Unable to read " + *file + ": " + r.error().desc);
        raw = std::move(*r);
    } else {
        raw = *data;
    }
    if (base64)
        return base64_decode(raw);
    return raw;
}

qapi::result<void> registry::add(const qapi::object_options& o)
{
    using qt = qapi::object_type;
    if (!id_wellformed(o.id))
        return qapi::generic("Parameter 'id' expects an identifier");

    // Properties QEMU refuses while it sets them, before the id is taken.
    switch (o.qom_type) {
    case qt::secret:
        if (auto r = refuse_loaded(*o.u.secret, "secret"); !r)
            return r;
        break;
    case qt::tls_creds_x509:
        if (auto r = refuse_loaded(*o.u.tls_creds_x509, "tls-creds-x509"); !r)
            return r;
        break;
    case qt::tls_creds_psk:
        if (auto r = refuse_loaded(*o.u.tls_creds_psk, "tls-creds-psk"); !r)
            return r;
        break;
    case qt::authz_simple:
        break;
    default:
        return qapi::generic("blockjobd does not support objects of type '" +
                             std::string(qapi::to_string(o.qom_type)) + "'");
    }
    if (find(o.id))
        return qapi::generic("attempt to add duplicate property '" + o.id + "' to object (type 'container')");

    std::shared_ptr<object> obj;
    switch (o.qom_type) {
    case qt::secret: {
        const auto& p = *o.u.secret;
        if (p.keyid) {
            // QEMU looks the key up first; blockjobd has no encrypted secrets at all.
            if (!std::dynamic_pointer_cast<secret>(find(*p.keyid)))
                return qapi::generic("No secret with id '" + *p.keyid + "'");
            return qapi::generic("blockjobd does not support encrypted secrets ('keyid')");
        }
        bool b64 = p.format && *p.format == qapi::q_crypto_secret_format::base64;
        auto v = load_secret(p.data, p.file, b64);
        if (!v)
            return v.error();
        obj = std::make_shared<secret>(o.id, std::move(*v));
        break;
    }
    case qt::tls_creds_x509: {
        const auto& p = *o.u.tls_creds_x509;
        if (!p.dir)
            return qapi::generic("Missing 'dir' property value");
        std::function<qapi::result<std::string>()> password;
        if (p.passwordid) {
            password = [this, id = *p.passwordid]() -> qapi::result<std::string> {
                auto pw = std::dynamic_pointer_cast<secret>(find(id));
                if (!pw)
                    return qapi::generic("No secret with id '" + id + "'");
                return pw->value();
            };
        }
        auto d = load_x509(*p.dir, to_endpoint(p.endpoint), p.verify_peer.value_or(true), p.priority, password);
        if (!d)
            return d.error();
        obj = std::make_shared<tls_creds>(o.id, object_kind::tls_creds_x509, std::move(*d));
        break;
    }
    case qt::tls_creds_psk: {
        const auto& p = *o.u.tls_creds_psk;
        if (!p.dir)
            return qapi::generic("Missing 'dir' property value");
        auto d = load_psk(*p.dir, to_endpoint(p.endpoint), p.priority, p.username);
        if (!d)
            return d.error();
        (*d)->verify_peer = p.verify_peer.value_or(true);
        obj = std::make_shared<tls_creds>(o.id, object_kind::tls_creds_psk, std::move(*d));
        break;
    }
    case qt::authz_simple:
        obj = std::make_shared<authz_simple>(o.id, o.u.authz_simple->identity);
        break;
    default:
        break;
    }
    // Never the secret's value, nor the authz identity's context beyond its id.
    log::get("crypto")->info("object '{}' added ({})", o.id, to_string(obj->kind()));
    objects_.push_back(std::move(obj));
    return {};
}

qapi::result<void> registry::del(std::string_view id)
{
    auto it = std::find_if(objects_.begin(), objects_.end(), [&](auto& o) { return o->id() == id; });
    if (it == objects_.end())
        return qapi::generic("object '" + std::string(id) + "' not found");
    log::get("crypto")->info("object '{}' deleted{}", id, it->use_count() > 1 ? " (still used until its users stop)" : "");
    objects_.erase(it);
    return {};
}

std::shared_ptr<object> registry::find(std::string_view id) const
{
    for (auto& o : objects_)
        if (o->id() == id)
            return o;
    return nullptr;
}

qapi::result<std::shared_ptr<tls_creds>> registry::tls_creds_for(std::string_view id, endpoint want) const
{
    auto o = find(id);
    if (!o)
        return qapi::generic("No TLS credentials with id '" + std::string(id) + "'");
    auto c = std::dynamic_pointer_cast<tls_creds>(o);
    if (!c)
        return qapi::generic("Object with id '" + std::string(id) + "' is not TLS credentials");
    if (c->endpoint() != want)
        return qapi::generic(std::string("Expected TLS credentials for a ") +
                             (want == endpoint::server ? "server" : "client") + " endpoint");
    return c;
}

std::shared_ptr<authz_simple> registry::find_authz(std::string_view id) const
{
    return std::dynamic_pointer_cast<authz_simple>(find(id));
}

std::vector<std::string> registry::ids() const
{
    std::vector<std::string> out;
    for (auto& o : objects_)
        out.push_back(o->id());
    return out;
}

} // namespace bjd::crypto
