"""The daemon's socket path, claimed: its folder checked (or made), the lock beside it held
for the daemon's life (one daemon per socket), a stale socket removed, the token file
written, the socket bound with its mode. Nothing is written through a symlink."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
from pathlib import Path

from footprint.daemon.config import StartError, TokenFile, not_own_file, symlink_refusal

log = logging.getLogger("footprint")

UNIX_PATH_MAX = 107  # bytes of sun_path, less the NUL


class SocketClaim:
    """The socket path, owned: the lock beside it held, the socket bound and listening.

    Every file is made in the socket's folder, which must be a real folder (not a symlink)
    of the daemon's user or root's; the lock and token files are opened with O_NOFOLLOW
    and written only if they are the daemon user's own regular files with no other link
    (a symlink there: the daemon refuses to start, saying so in one line; its target is
    left as it was). ``token_file``: the HTTP intake's token is ``token`` (--token), else
    one generated at the first start into ``PATH.token`` (0600) and reused after."""

    def __init__(
        self, path: Path, group: str | None, token: str | None = None, token_file: bool = False
    ) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.token_path = path.with_name(path.name + ".token")
        self.group = group
        self.lock_fd: int | None = None
        self.listener: socket.socket | None = None
        self._token_file = TokenFile(self.token_path, token) if token_file else None
        self.token: str | None = token  # what POST /v1/spans wants (set by claim)

    def claim(self) -> socket.socket:
        path = self.path
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise StartError(
                f"socket path {path} is {len(os.fsencode(path))} bytes; a Unix socket path "
                f"has at most {UNIX_PATH_MAX}: give a shorter --socket",
                2,
            )
        gid = group_id(self.group) if self.group else None
        self._make_directory(gid)
        self._lock()
        try:
            self._remove_stale()
            if self._token_file is not None:
                self.token = self._token_file.claim()
        except BaseException:
            self.release()  # the lock too: nothing of this start is left
            raise
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mode = 0o660 if gid is not None else 0o600
        old_umask = os.umask(0o777 & ~mode)  # no moment with a wider mode (no threads yet)
        try:
            listener.bind(os.fspath(path))  # a new name: bind never follows a link there
        except OSError as exc:
            listener.close()
            raise StartError(f"cannot bind {path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        try:
            if gid is not None:
                os.chown(path, -1, gid, follow_symlinks=False)
            info = os.lstat(path)
            if not stat.S_ISSOCK(info.st_mode):
                raise OSError(errno.EEXIST, "replaced by something else after bind")
            if stat.S_IMODE(info.st_mode) != mode:  # the umask made it so, on Linux
                os.chmod(path, mode)
        except OSError as exc:
            listener.close()
            raise StartError(f"cannot set the owner group or mode of {path}: {exc}") from None
        listener.listen(512)
        listener.setblocking(False)
        self.listener = listener
        return listener

    def _make_directory(self, gid: int | None) -> None:
        """The socket's folder: made 0700 (0750 and the group's with --group) if missing.
        It must be a real folder (not a symlink) of the daemon's user or root's: another
        user who owns it could swap the files the daemon makes there."""
        directory = self.path.parent
        mode = 0o750 if gid is not None else 0o700
        created = False
        try:
            os.lstat(directory)
        except FileNotFoundError:
            try:
                directory.mkdir(mode=mode, parents=True, exist_ok=True)
                created = True
            except OSError as exc:
                raise StartError(
                    f"cannot create {directory} for the socket: {exc.strerror or exc} (give "
                    "--socket PATH in a folder you can write, or set XDG_RUNTIME_DIR)"
                ) from None
        except OSError as exc:
            raise StartError(f"cannot use {directory} for the socket: {exc.strerror}") from None
        try:  # the folder itself, never through a link: checked and set on what was opened
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if os.path.islink(directory):
                raise StartError(symlink_refusal(directory)) from None
            raise StartError(f"cannot use {directory} for the socket: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            euid = os.geteuid()
            if info.st_uid not in (euid, 0):
                raise StartError(
                    f"{directory} belongs to uid {info.st_uid}, not to this daemon's user "
                    f"(uid {euid}) nor root: give --socket PATH in a folder of its own"
                )
            if created:
                os.fchmod(fd, mode)
                if gid is not None:
                    os.fchown(fd, -1, gid)
        except OSError as exc:
            raise StartError(f"cannot set the mode of {directory}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def _open_own(self, path: Path, flags: int, what: str) -> int:
        """Open (or create, 0600) a file of the daemon's in the socket's folder: never
        through a symlink, never a file that is not the daemon user's own (StartError)."""
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(path):
                raise StartError(symlink_refusal(path)) from None
            raise StartError(f"cannot open {path}: {exc.strerror}") from None
        problem = not_own_file(os.fstat(fd))
        if problem is not None:
            os.close(fd)
            raise StartError(
                f"{path} {problem}: not this daemon's {what}; refusing to write it (remove it)"
            )
        return fd

    def _lock(self) -> None:
        """Hold ``PATH.lock`` for the daemon's life: one daemon per socket."""
        while True:
            fd = self._open_own(self.lock_path, os.O_RDWR | os.O_CREAT, "lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StartError(
                    f"footprint daemon: another daemon is listening on {self.path}"
                ) from None
            try:  # the file locked must still be the one at the path (see release)
                if os.lstat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def _remove_stale(self) -> None:
        """A socket file nobody accepts on (a killed daemon's) is removed; one that
        answers belongs to something else, and is left alone."""
        path = self.path
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise StartError(f"{path} exists and is not a socket; remove it or give --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            log.info("footprint daemon: removed the stale socket %s", path)
            return
        except OSError:
            pass
        finally:
            probe.close()
        raise StartError(f"footprint daemon: another daemon is listening on {path}")

    def close_listener(self) -> None:
        """Close and remove the socket: new clients find no daemon. The lock stays held
        until ``release`` (this daemon still writes)."""
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()
            self.listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def release(self) -> None:
        """Close and remove the socket, then the lock (removed while still held, so a
        daemon starting now locks the new file, never this one)."""
        self.close_listener()
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(self.lock_fd)
            self.lock_fd = None


def group_id(name: str) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise StartError(f"--group: no group named {name!r}", 2) from None
