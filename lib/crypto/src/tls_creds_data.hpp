// SPDX-License-Identifier: MIT
#pragma once
// The GnuTLS side of a tls-creds object (private to lib/crypto).
#include "bjd/crypto/objects.hpp"

#include <gnutls/gnutls.h>

#include <string>

namespace bjd::crypto {

class tls_creds_data {
public:
    tls_creds_data() = default;
    tls_creds_data(const tls_creds_data&) = delete;
    tls_creds_data& operator=(const tls_creds_data&) = delete;
    ~tls_creds_data()
    {
        if (x509)
            gnutls_certificate_free_credentials(x509);
        if (psk_server)
            gnutls_psk_free_server_credentials(psk_server);
        if (psk_client)
            gnutls_psk_free_client_credentials(psk_client);
        if (dh)
            gnutls_dh_params_deinit(dh);
    }

    crypto::endpoint ep = crypto::endpoint::client;
    bool verify_peer = true;
    std::string priority;
    gnutls_certificate_credentials_t x509 = nullptr;
    gnutls_psk_server_credentials_t psk_server = nullptr;
    gnutls_psk_client_credentials_t psk_client = nullptr;
    gnutls_dh_params_t dh = nullptr;
};

} // namespace bjd::crypto
