"""What every kernel object held by an fd shares: pinning and a deterministic close."""

from . import pin as _pin


class FD:
    """Owns `self.fd`; subclasses define close(), which must be idempotent."""

    fd = -1

    def pin(self, path):
        _pin.pin(self.fd, path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:    # noqa: BLE001 -- nothing may escape a finalizer
            pass
