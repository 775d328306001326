// SPDX-License-Identifier: MIT
// Loading tls-creds-x509 and tls-creds-psk from QEMU's directory layouts into GnuTLS.
#include "tls_creds_data.hpp"

#include <gnutls/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include <unistd.h>

namespace bjd::crypto {

namespace {

constexpr const char* default_priority = "NORMAL";
/// The key exchanges QEMU adds to the priority for PSK credentials.
constexpr const char* psk_priority_extra = ":+ECDHE-PSK:+DHE-PSK:+PSK";

/// QEMU's qcrypto_tls_creds_get_path: "Unable to access credentials D/F: <strerror>" when
/// a required file cannot be accessed; empty when an optional one is absent.
qapi::result<std::string> cred_path(const std::string& dir, const char* name, bool required)
{
    std::string p = dir + "/" + name;
    if (::access(p.c_str(), R_OK) < 0) {
        if (errno == ENOENT && !required)
            return std::string();
        return qapi::generic("Unable to access credentials " + p + ": " + std::strerror(errno));
    }
    return p;
}

qapi::error gnutls_error(const std::string& what, int rc)
{
    return qapi::generic(what + ": " + gnutls_strerror(rc));
}

} // namespace

qapi::result<std::unique_ptr<tls_creds_data>> load_x509(
    const std::string& dir, endpoint ep, bool verify_peer, std::optional<std::string> priority,
    const std::function<qapi::result<std::string>()>& key_password)
{
    std::string ca, crl, cert, key, dh;
    const bool server = ep == endpoint::server;
    // QEMU's order: the CA, then (server) the CRL, certificate, key and DH parameters, or
    // (client) the certificate and key, which a client may go without.
    auto get = [&](std::string& out, const char* name, bool required) -> qapi::result<void> {
        auto r = cred_path(dir, name, required);
        if (!r)
            return r.error();
        out = std::move(*r);
        return {};
    };
    if (auto r = get(ca, "ca-cert.pem", true); !r)
        return r.error();
    if (server) {
        if (auto r = get(crl, "ca-crl.pem", false); !r)
            return r.error();
        if (auto r = get(cert, "server-cert.pem", true); !r)
            return r.error();
        if (auto r = get(key, "server-key.pem", true); !r)
            return r.error();
        if (auto r = get(dh, "dh-params.pem", false); !r)
            return r.error();
    } else {
        if (auto r = get(cert, "client-cert.pem", false); !r)
            return r.error();
        if (auto r = get(key, "client-key.pem", false); !r)
            return r.error();
    }
    std::string password;
    if (key_password) {
        auto pw = key_password();
        if (!pw)
            return pw.error();
        password = std::move(*pw);
    }

    auto d = std::make_unique<tls_creds_data>();
    d->ep = ep;
    d->verify_peer = verify_peer;
    d->priority = priority.value_or(default_priority);
    if (int rc = gnutls_certificate_allocate_credentials(&d->x509); rc < 0)
        return gnutls_error("Cannot allocate credentials", rc);
    if (int rc = gnutls_certificate_set_x509_trust_file(d->x509, ca.c_str(), GNUTLS_X509_FMT_PEM); rc < 0)
        return gnutls_error("Cannot load CA certificate " + ca, rc);
    if (!crl.empty())
        if (int rc = gnutls_certificate_set_x509_crl_file(d->x509, crl.c_str(), GNUTLS_X509_FMT_PEM); rc < 0)
            return gnutls_error("Cannot load CRL " + crl, rc);
    if (!cert.empty() && !key.empty()) {
        int rc = gnutls_certificate_set_x509_key_file2(d->x509, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM,
                                                       key_password ? password.c_str() : nullptr, 0);
        if (rc < 0)
            return gnutls_error("Cannot load certificate " + cert + " & key " + key, rc);
    }
    if (!password.empty())
        std::memset(password.data(), 0, password.size());
    if (server) {
        if (!dh.empty()) {
            std::ifstream f(dh);
            std::string pem((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
            gnutls_datum_t datum{reinterpret_cast<unsigned char*>(pem.data()), unsigned(pem.size())};
            if (int rc = gnutls_dh_params_init(&d->dh); rc < 0)
                return gnutls_error("Unable to initialize DH parameters", rc);
            if (int rc = gnutls_dh_params_import_pkcs3(d->dh, &datum, GNUTLS_X509_FMT_PEM); rc < 0)
                return gnutls_error("Unable to load DH parameters from " + dh, rc);
            gnutls_certificate_set_dh_params(d->x509, d->dh);
        } else {
            gnutls_certificate_set_known_dh_params(d->x509, GNUTLS_SEC_PARAM_MEDIUM);
        }
    }
    return d;
}

qapi::result<std::unique_ptr<tls_creds_data>> load_psk(const std::string& dir, endpoint ep,
                                                       std::optional<std::string> priority,
                                                       std::optional<std::string> username)
{
    auto path = cred_path(dir, "keys.psk", true);
    if (!path)
        return path.error();
    auto d = std::make_unique<tls_creds_data>();
    d->ep = ep;
    d->priority = priority.value_or(default_priority) + psk_priority_extra;
    if (ep == endpoint::server) {
        if (int rc = gnutls_psk_allocate_server_credentials(&d->psk_server); rc < 0)
            return gnutls_error("Cannot allocate credentials", rc);
        // GnuTLS reads the file at each handshake, as in QEMU: keys can be added live.
        if (int rc = gnutls_psk_set_server_credentials_file(d->psk_server, path->c_str()); rc < 0)
            return gnutls_error("Cannot set PSK server credentials", rc);
        gnutls_psk_set_server_known_dh_params(d->psk_server, GNUTLS_SEC_PARAM_MEDIUM);
        return d;
    }
    const std::string user = username.value_or("qemu");
    std::ifstream f(*path);
    std::string line, key;
    bool found = false;
    while (std::getline(f, line)) {
        if (line.size() > user.size() && line.compare(0, user.size(), user) == 0 && line[user.size()] == ':') {
            key = line.substr(user.size() + 1);
            while (!key.empty() && (key.back() == '\r' || key.back() == ' '))
                key.pop_back();
            found = true;
            break;
        }
    }
    if (!found)
        return qapi::generic("Username " + user + " not found in PSK file " + *path);
    if (int rc = gnutls_psk_allocate_client_credentials(&d->psk_client); rc < 0)
        return gnutls_error("Cannot allocate credentials", rc);
    gnutls_datum_t k{reinterpret_cast<unsigned char*>(key.data()), unsigned(key.size())};
    int rc = gnutls_psk_set_client_credentials(d->psk_client, user.c_str(), &k, GNUTLS_PSK_KEY_HEX);
    std::memset(key.data(), 0, key.size());
    if (rc < 0)
        return gnutls_error("Cannot set PSK client credentials", rc);
    return d;
}

} // namespace bjd::crypto
