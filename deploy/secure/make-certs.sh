#!/usr/bin/env bash
# Makes what deploy/docker-compose.secure.yml mounts as secrets, with the openssl CLI: a CA, a
# certificate for spillway signed by it (names: spillway, localhost, 127.0.0.1), and a random
# secret for each access key in deploy/spillway/spillway-secure.toml.
#
#   bash deploy/secure/make-certs.sh [DIR]     # DIR defaults to deploy/secure
#
# For a local stack only: in production the certificate comes from your CA (cert-manager, an
# internal PKI) and the secrets from your secret store.
set -euo pipefail
dir=${1:-$(dirname "$0")}
mkdir -p "$dir"
cd "$dir"
days=${DAYS:-365}

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.crt -days "$days" -subj "/CN=spillway local CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout tls.key -out tls.csr -subj "/CN=spillway" 2>/dev/null
cat >tls.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:spillway,DNS:localhost,IP:127.0.0.1
EXT
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out tls.crt \
  -days "$days" -extfile tls.ext 2>/dev/null
rm -f tls.csr tls.ext ca.srl
for key in producer operator; do
  [ -s "$key.secret" ] || openssl rand -hex 20 >"$key.secret"
done
# The container runs as an unprivileged user that must read these bind-mounted files.
chmod 644 tls.key ./*.secret
chmod 600 ca.key
echo "wrote ca.crt, tls.crt, tls.key, producer.secret, operator.secret in $PWD"
