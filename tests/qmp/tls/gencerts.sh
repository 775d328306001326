#!/bin/sh
# SPDX-License-Identifier: MIT
# Throwaway TLS material for tests, in QEMU's layouts:
#   gencerts.sh DIR [HOSTNAME [IP]]
# DIR/server: ca-cert.pem server-cert.pem server-key.pem   (x509, endpoint=server)
# DIR/client: ca-cert.pem client-cert.pem client-key.pem   (x509, endpoint=client)
# DIR/psk:    keys.psk with the user "alice"               (tls-creds-psk, both ends)
# DIR/rogue:  a second CA and client pair the first CA does not know
# The server certificate names HOSTNAME (default localhost), 127.0.0.1 and IP if given.
# The client certificate's DN is "O=blockjobd tests,CN=client" (as tls-authz sees it).
# Needs certtool and psktool (Debian: gnutls-bin).
set -eu
dir=$1
host=${2:-localhost}
extra_ip=${3:+ip_address = $3}
mkdir -p "$dir/server" "$dir/client" "$dir/psk" "$dir/rogue" "$dir/work"
w=$dir/work
gen() { certtool --generate-privkey --key-type=ecdsa --outfile "$1" >/dev/null 2>&1; }

cat >"$w/ca.info" <<EOT
cn = blockjobd test CA
ca
cert_signing_key
expiration_days = 2
EOT
gen "$w/ca-key.pem"
certtool --generate-self-signed --load-privkey "$w/ca-key.pem" --template "$w/ca.info" \
    --outfile "$w/ca-cert.pem" >/dev/null 2>&1

cat >"$w/server.info" <<EOT
organization = blockjobd tests
cn = $host
dns_name = $host
ip_address = 127.0.0.1
$extra_ip
tls_www_server
encryption_key
signing_key
expiration_days = 2
EOT
gen "$dir/server/server-key.pem"
certtool --generate-certificate --load-ca-certificate "$w/ca-cert.pem" --load-ca-privkey "$w/ca-key.pem" \
    --load-privkey "$dir/server/server-key.pem" --template "$w/server.info" \
    --outfile "$dir/server/server-cert.pem" >/dev/null 2>&1

cat >"$w/client.info" <<EOT
organization = blockjobd tests
cn = client
tls_www_client
encryption_key
signing_key
expiration_days = 2
EOT
gen "$dir/client/client-key.pem"
certtool --generate-certificate --load-ca-certificate "$w/ca-cert.pem" --load-ca-privkey "$w/ca-key.pem" \
    --load-privkey "$dir/client/client-key.pem" --template "$w/client.info" \
    --outfile "$dir/client/client-cert.pem" >/dev/null 2>&1
cp "$w/ca-cert.pem" "$dir/server/"
cp "$w/ca-cert.pem" "$dir/client/"

# A client signed by another CA: a server with verify-peer=on must refuse it.
gen "$w/rogue-ca-key.pem"
certtool --generate-self-signed --load-privkey "$w/rogue-ca-key.pem" --template "$w/ca.info" \
    --outfile "$w/rogue-ca-cert.pem" >/dev/null 2>&1
gen "$dir/rogue/client-key.pem"
certtool --generate-certificate --load-ca-certificate "$w/rogue-ca-cert.pem" --load-ca-privkey "$w/rogue-ca-key.pem" \
    --load-privkey "$dir/rogue/client-key.pem" --template "$w/client.info" \
    --outfile "$dir/rogue/client-cert.pem" >/dev/null 2>&1
cp "$w/ca-cert.pem" "$dir/rogue/"

psktool -u alice -p "$dir/psk/keys.psk" >/dev/null 2>&1
rm -rf "$w"
