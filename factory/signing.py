"""Ed25519 release signatures: a publisher's key pair, signing and checking manifest.json.

What is signed: the exact bytes of a release's manifest.json (it lists every file with its
sha256 and size, so the signature covers every file). The signature is stored beside it as
manifest.json.sig: the raw 64-byte Ed25519 signature, nothing else.

Key files: the private key is PKCS#8 PEM (mode 0600); the public key (`.pub`) is
SubjectPublicKeyInfo PEM, which OpenSSL reads; its last 32 bytes of DER are the raw key an app
pins (`raw_public_key`).
"""
from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from targets.errors import FactoryError

SIGNATURE_SUFFIX = ".sig"
SIGNATURE_BYTES = 64
KEY_FILE_LIMIT = 16_384  # a PEM key is a few hundred bytes


def new_key_pair(folder: Path, name: str = "release") -> tuple[Path, Path]:
    """Write `folder/name.key` (private, 0600) and `folder/name.pub`; never overwrite a key."""
    folder = Path(folder)
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise FactoryError(f"{path} already exists; keys are never overwritten (choose another --out or --name)")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem(key.public_key()), 0o644)
    except BaseException:
        private_path.unlink()
        raise
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (O_EXCL: never follow or replace an existing file)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    except FileExistsError:
        raise FactoryError(f"{path} already exists; keys are never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 bytes an app pins."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of sha256(raw key)."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]


def raw_key_base64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public_key(key)).decode()


def _read_key_file(path: Path, option: str) -> bytes:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_FILE_LIMIT + 1)
    except OSError as exc:
        raise FactoryError(f"{option} {path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > KEY_FILE_LIMIT:
        raise FactoryError(f"{option} {path}: too large for a key file")
    return data


def load_private_key(path: Path, option: str = "--sign-key") -> Ed25519PrivateKey:
    path = Path(path)
    data = _read_key_file(path, option)
    if path.stat().st_mode & 0o077:
        raise FactoryError(f"{option} {path}: readable by others; run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise FactoryError(f"{option} {path}: not an unencrypted Ed25519 private key "
                           "(make one with `factory keys new`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FactoryError(f"{option} {path}: not an Ed25519 key (make one with `factory keys new`)")
    return key


def load_public_key(path: Path, option: str = "--trust-key") -> Ed25519PublicKey:
    data = _read_key_file(Path(path), option)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise FactoryError(f"{option} {path}: not an Ed25519 public key (the .pub file of `factory keys new`)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise FactoryError(f"{option} {path}: not an Ed25519 public key (the .pub file of `factory keys new`)")
    return key


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(manifest_bytes)


def check(manifest_bytes: bytes, signature: bytes | None, key: Ed25519PublicKey, where: str) -> None:
    """Raise a FactoryError unless `signature` is `key`'s signature of exactly `manifest_bytes`."""
    if signature is None:
        raise FactoryError(f"{where} is unsigned (no manifest.json.sig) but a trusted key was given; "
                           "refusing it (publish with --sign-key)")
    if len(signature) != SIGNATURE_BYTES:
        raise FactoryError(f"{where}: manifest.json.sig is {len(signature)} bytes, not a {SIGNATURE_BYTES}-byte "
                           "Ed25519 signature; refusing it")
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise FactoryError(f"{where}: manifest.json.sig does not match the trusted key {key_id(key)} "
                           "(tampered, or signed by another key); refusing it") from None
