"""The socket server: serves viewers over a Unix socket, on the agent thread (`perftop.agent.pump`).

Once `serve()` is called it listens on `<socket dir>/<pid>.sock` (directory 0700, socket 0600, every
peer checked with SO_PEERCRED), and the agent thread waits in its `selectors` loop over non-blocking
sockets between its tasks. Each connection has a bounded output buffer: a viewer that stops reading is
disconnected and counted, and the app never waits for it. Idle viewers, viewers that send a frame too
slowly and viewers that stop reading are closed after a timeout, and when every slot is taken the
longest-idle viewer makes room for a new one. What a request is answered with is `perftop.agent.handlers`'
business (actions run on its worker thread, so stats keep flowing while one runs).

The app may close the agent's file descriptors under it (a daemonizing app closes every fd, and its next
socket reuses the numbers). So the agent remembers each of its sockets' identity (fd, device, inode),
checks it before every read, write or close, and a few times a second: a socket that is no longer its own
is forgotten without being touched, and the agent makes new ones (wake-up pair, listening socket). The
selector is poll(), which holds no fd of its own.

Standard library only. Nothing here raises into the app: failures are logged once and the loop goes on.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import stat
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from perftop.agent import gcwatch
from perftop.agent.handlers import Handlers, available_methods
from perftop.agent.pump import TICK_S, log_once, pump
from perftop.agent.recorder import registry
from perftop.wire import paths
from perftop.wire.protocol import ErrorFrame, FrameDecoder, Hello, ProtocolError, Request, Response, encode

OUTBUF_LIMIT = 4 * 1024 * 1024
"""Bytes queued for one viewer beyond which it is disconnected as too slow (one frame always fits)."""
MAX_CONNECTIONS = 64
HANDSHAKE_TIMEOUT_S = 10.0
"""A connection that has not said hello by then is closed."""
IDLE_TIMEOUT_S = 300.0
"""A greeted viewer that sends no request for this long (and waits for no action) is closed."""
IDLE_EVICT_S = 5.0
"""When every slot is taken, a viewer idle for this long is closed to make room for a new one."""
FRAME_TIMEOUT_S = 10.0
"""A frame must arrive whole within this time of its first byte (a 1 byte/s sender is closed)."""
WRITE_TIMEOUT_S = 30.0
"""A viewer whose queued output makes no progress for this long is closed as too slow."""
ACCEPT_PAUSE_S = 1.0
"""How long to stop accepting after accept() fails (out of file descriptors)."""
RECV_BYTES = 256 * 1024
MAX_REQUEST_BYTES = 1024 * 1024
"""Largest frame a viewer may send (requests are small); far below MAX_FRAME_BYTES, so that 64 viewers
cannot make the agent buffer gigabytes."""
LOOP_DISCOVERY_S = 5.0
"""How often the agent thread looks for running asyncio loops to record their lag (perftop.agent.loop)."""
FORK_SERVE_WAIT_S = 1.0
"""How long a forked child's agent thread waits, at most, for the code that forked to run on before it
makes the child's socket (see `Pump.forker_moved_on`)."""
_PEERCRED = struct.Struct("3i")

_Identity = tuple[int, int, int]
"""(fd, st_dev, st_ino) of a socket when the agent made or accepted it."""


def _identity(sock: socket.socket) -> _Identity | None:
    """The identity of a socket we just made or accepted, or None if it has no usable fd."""
    fd = sock.fileno()
    if fd < 0:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (fd, st.st_dev, st.st_ino)


def _is_ours(sock: socket.socket | None, ident: _Identity | None) -> bool:
    """Whether `sock`'s fd still refers to the socket we made: the app may have closed it and reused the
    number for one of its own files or connections, which we must never read, write or close."""
    if sock is None or ident is None:
        return False
    fd = sock.fileno()
    if fd != ident[0]:
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (ident[1], ident[2])


def _let_go(sock: socket.socket | None, ident: _Identity | None) -> None:
    """Close `sock` if its fd is still ours; otherwise forget it without closing the fd (no longer ours)."""
    if sock is None:
        return
    if _is_ours(sock, ident):
        with contextlib.suppress(OSError):
            sock.close()
    else:
        with contextlib.suppress(OSError):
            sock.detach()


def _new_selector() -> selectors.BaseSelector:
    """poll() where available: unlike epoll it has no fd of its own for the app to close."""
    poll_selector = getattr(selectors, "PollSelector", None)
    return poll_selector() if poll_selector is not None else selectors.SelectSelector()


@dataclass
class _Conn:
    sock: socket.socket
    id: int
    opened_at: float
    peer_pid: int
    ident: _Identity | None = None
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(MAX_REQUEST_BYTES))
    out: bytearray = field(default_factory=bytearray)
    greeted: bool = False
    writing: bool = False
    last_active: float = 0.0
    """When it was opened or last sent a whole frame or got an action's answer (monotonic)."""
    frame_started: float | None = None
    """When the first byte of a frame still incomplete arrived."""
    stalled_since: float | None = None
    """Since when queued output has made no progress."""


@dataclass
class Counters:
    """What the server has done, reported under `stats`' `overflow`."""

    refused_peer: int = 0
    refused_full: int = 0
    closed_slow: int = 0
    closed_idle: int = 0
    closed_frame_timeout: int = 0
    fds_lost: int = 0
    """Times the agent found one of its sockets closed (or its fd reused) by the app, and made new ones."""

    def overflow(self) -> dict[str, int]:
        """The counts as `stats`' `overflow` keys."""
        return {
            "viewers_closed_slow": self.closed_slow,
            "viewers_refused": self.refused_peer + self.refused_full,
            "viewers_closed_idle": self.closed_idle,
            "viewers_closed_frame_timeout": self.closed_frame_timeout,
            "fds_lost": self.fds_lost,
        }


class Server:
    """The socket server; while it has a selector, what the agent thread waits in between its tasks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_r_ident: _Identity | None = None
        self._waker: tuple[socket.socket, _Identity] | None = None
        """The write end of the wake-up pair with its identity, read atomically by other threads."""
        self._listener: socket.socket | None = None
        self._listener_ident: _Identity | None = None
        self._listen_ino: int | None = None
        self.path: str | None = None
        self.directory: str | None = None
        self._asked_dir: str | None = None
        """The directory `serve()` was given (None: the default), which a forked child asks for again."""
        self._serve_after_fork: tuple[str | None, str | None] | None = None
        """In a forked child: (name, directory) the agent thread serves with once it runs."""
        self._fork_final_dir: str | None = None
        """In a forked child of a serving agent: the directory its final stats go to, socket or not."""
        self._want_serve = False
        self._want_stop_serving = False
        self._conns: dict[int, _Conn] = {}
        self._next_conn_id = 1
        self._stopped = threading.Event()
        self.counters = Counters()
        self.handlers = Handlers(self.wake, lambda: self.counters.overflow())
        self._accept_paused_until: float | None = None
        self._mp_hooked = False
        self.forked = False
        """This process is a forked child of an agent's process (a pre-fork server's worker)."""

    # -- control, from any thread ---------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self.handlers.name

    def serve(self, name: str | None, directory: str | None) -> None:
        """Listen on this process's socket (idempotent). Raises OSError if the socket cannot be made."""
        with self._lock:
            if self._listener is not None:
                if name:
                    self.handlers.name = name  # e.g. a forked worker naming itself
                return
            self._asked_dir = directory
            directory, fallback_reason = paths.agent_socket_dir(directory)
            paths.remove_stale_sockets(directory)
            path = paths.socket_path(os.getpid(), directory)
            if self._sel is None:
                self._sel = _new_selector()
                self._new_wake_pair()
            self._bind(path)
            self.path = path
            if fallback_reason is not None:
                log_once("socket-dir-fallback", f"{fallback_reason}; this agent listens at {path} instead")
            self.directory = directory
            self.handlers.name = name or program_name()
            self.handlers.started_at = time.time()
            self.handlers.capabilities = available_methods()
            self._want_serve = True
        pump.waiter = self
        pump.ensure_running()
        pump.wake()

    def stop_serving(self, timeout: float = 5.0) -> None:
        """Close the socket and every viewer connection, and remove the socket file."""
        with self._lock:
            if self._listener is None:
                return
            self._want_stop_serving = True
            self._stopped.clear()
            thread = pump.thread
        self._remove_socket_file()
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            self.wake()
            self._stopped.wait(timeout)
        else:
            self._close_server()

    @property
    def serving(self) -> bool:
        return self._listener is not None

    def _bind(self, path: str) -> None:
        """Listen on `path` (replacing whatever file is there: the directory is ours and private)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(64)
            sock.setblocking(False)
            self._listen_ino = os.stat(path).st_ino
        except OSError:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._listener = sock
        self._listener_ident = _identity(sock)

    def _new_wake_pair(self) -> None:
        """A fresh wake-up pair, registered with the selector (the old one, if any, is let go first)."""
        old = self._waker
        self._waker = None
        if old is not None:
            _let_go(*old)
        if self._wake_r is not None:
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(self._wake_r)
            _let_go(self._wake_r, self._wake_r_ident)
            self._wake_r = None
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        r_ident, w_ident = _identity(r), _identity(w)
        if r_ident is None or w_ident is None:
            r.close()
            w.close()
            raise OSError("the wake-up pair has no usable fds")
        self._wake_r, self._wake_r_ident = r, r_ident
        if self._sel is not None:
            self._sel.register(r, selectors.EVENT_READ, None)
        self._waker = (w, w_ident)

    def wake(self) -> None:
        """Wake the agent thread; writes only to a wake-up socket verified to be still ours."""
        waker = self._waker
        if waker is not None and _is_ours(*waker):
            with contextlib.suppress(OSError):
                waker[0].send(b"\0")

    def _remove_socket_file(self) -> None:
        """Unlink our socket file, unless the path now holds someone else's socket."""
        path, ino = self.path, self._listen_ino
        if path is None:
            return
        self._listen_ino = None
        try:
            if os.stat(path).st_ino == ino:
                os.unlink(path)
        except OSError:
            pass

    # -- exit and fork (registered with the pump) ------------------------------------------------------

    def at_exit(self) -> None:
        """At interpreter exit: leave a forked worker's final stats, remove the socket file and cancel a
        running action."""
        self._write_final()
        self._remove_socket_file()
        self.handlers.cancel()

    def _write_final(self) -> None:
        """In a forked worker (gunicorn, Celery prefork) or a spawned multiprocessing one, leave its
        since-start stats beside its socket (`Handlers.write_final`)."""
        path = self.path
        if path is None and self._fork_final_dir is not None:
            # Exited before its agent thread made the socket, or while making it: a worker recycled after
            # one request may leave that soon, and its counts must still reach the service.
            path = paths.socket_path(os.getpid(), self._fork_final_dir)
        if path is None or not (self.forked or _mp_spawned()) or not path.endswith(paths.SOCKET_SUFFIX):
            return
        self.handlers.write_final(path)

    def after_fork_in_child(self) -> None:
        """In a forked child: let go of the parent's sockets and start afresh: fresh state, the agent
        thread again, and (made by that thread) a socket of our own if the parent served one."""
        was_serving = self._listener is not None
        self.forked = True
        name, directory = self.handlers.name, self._asked_dir
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        _let_go(self._listener, self._listener_ident)
        _let_go(self._wake_r, self._wake_r_ident)
        if self._waker is not None:
            _let_go(*self._waker)
        for conn in self._conns.values():
            _let_go(conn.sock, conn.ident)
        if self._sel is not None:
            with contextlib.suppress(OSError):
                self._sel.close()
        self._sel = self._wake_r = self._listener = None
        self._waker = None
        self._wake_r_ident = self._listener_ident = None
        self._listen_ino = None
        self.path = None
        self._conns = {}
        self._want_serve = self._want_stop_serving = False
        self.counters = Counters()
        self.handlers.reset_after_fork()
        self._accept_paused_until = None
        # The socket is made by the new agent thread, not here: a fork about to exec (subprocess with a
        # preexec_fn runs these hooks too) then leaves no socket file and does no I/O before the exec.
        self._serve_after_fork = (name, directory) if was_serving else None
        self._fork_final_dir = paths.socket_dir(directory) if was_serving else None
        if was_serving:
            pump.call_soon(self._serve_pending)
            pump.ensure_running()

    def _serve_pending(self) -> None:
        """On the agent thread of a forked child: serve as the parent did, once the code that forked runs
        on (a child that execs right after the fork never does, so it leaves no socket behind)."""
        deadline = time.monotonic() + FORK_SERVE_WAIT_S
        while not pump.forker_moved_on() and time.monotonic() < deadline:
            time.sleep(0.001)
        pending, self._serve_after_fork = self._serve_after_fork, None
        if pending is not None and self._listener is None:
            try:
                self.serve(*pending)
            except Exception as exc:
                log_once("fork-serve", "could not open the agent socket in a forked child", exc=exc)

    def before_fork(self) -> None:
        """In the parent, just before a fork: if the app uses multiprocessing, make sure its workers
        remove their sockets. They leave through os._exit, which skips atexit, so the cleanup goes in
        multiprocessing's own finalizers; those are reset in each worker, hence the after-fork hook."""
        if self._mp_hooked or self._listener is None:
            return
        util = sys.modules.get("multiprocessing.util")
        register = getattr(util, "register_after_fork", None)
        if register is None:
            return
        try:
            register(self, _mp_worker_started)
            self._mp_hooked = True
        except Exception as exc:
            log_once("mp-hook", "could not hook the socket cleanup into multiprocessing", exc=exc)

    # -- on the agent thread ---------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """One pass of the loop: apply serve/stop requests, wait for events up to `timeout`, handle them."""
        sel = self._sel
        if sel is None:
            time.sleep(min(timeout, TICK_S))
            return
        if self._want_serve:
            self._want_serve = False
            listener = self._listener
            if listener is not None:
                sel.register(listener, selectors.EVENT_READ, "listen")
        if self._want_stop_serving:
            self._close_server()
            self._want_stop_serving = False
            self._stopped.set()
        try:
            events = sel.select(timeout)
        except OSError:
            # One of our fds is no longer valid (closed by the app): make new ones, then carry on.
            self._recover()
            time.sleep(min(timeout, TICK_S))
            return
        for key, mask in events:
            self._on_event(key, mask)
        self._finish_jobs()

    def _recover(self) -> bool:
        """Check every socket of ours; let go of those that are not ours any more and make new ones.

        Returns True if something had been lost. Runs in the agent thread.
        """
        lost = False
        for conn in list(self._conns.values()):
            if not _is_ours(conn.sock, conn.ident):
                lost = True
                self._close(conn)
        if not (_is_ours(self._wake_r, self._wake_r_ident) and self._waker and _is_ours(*self._waker)):
            lost = True
            self._new_wake_pair()
        listener = self._listener
        if listener is not None and not _is_ours(listener, self._listener_ident):
            lost = True
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(listener)
            _let_go(listener, None)
            self._listener = self._listener_ident = None
            self._rebind()
        if lost:
            self.counters.fds_lost += 1
            log_once(
                "fds-lost",
                "the app closed the agent's file descriptors; the agent let them go and made new ones"
                + (f" (socket {self.path})" if self._listener is not None else ""),
            )
        return lost

    def _rebind(self) -> None:
        """Listen again on our socket path, after the app closed our listening socket's fd."""
        path = self.path
        if path is None:
            return
        try:
            st = os.lstat(path)
            if st.st_ino != self._listen_ino:
                log_once("rebind-other", f"{path} is not our socket any more; not serving there again")
                return
        except FileNotFoundError:
            pass
        except OSError as exc:
            log_once("rebind", f"could not check {path}: {exc}", exc=exc)
            return
        try:
            self._bind(path)
        except OSError as exc:
            log_once("rebind", f"could not listen on {path} again: {exc}", exc=exc)
            return
        if self._sel is not None and self._accept_paused_until is None and self._listener is not None:
            self._sel.register(self._listener, selectors.EVENT_READ, "listen")

    def _on_event(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.data is None:
            wake = self._wake_r
            if key.fileobj is not wake:
                # Left registered from a wake socket already let go of (the app closed its fd): drop it,
                # or whatever gets that fd number next could wake this loop for ever.
                with contextlib.suppress(KeyError, ValueError, OSError):
                    if self._sel is not None:
                        self._sel.unregister(key.fd)
                return
            if not _is_ours(wake, self._wake_r_ident):
                self._recover()
                return
            ended = False
            with contextlib.suppress(OSError):  # BlockingIOError: drained
                while wake is not None:
                    if not wake.recv(4096):
                        ended = True  # the write end is gone: an ended socket stays readable for ever
                        break
            if ended and not self._recover():
                self._new_wake_pair()
        elif key.data == "listen":
            if not _is_ours(self._listener, self._listener_ident):
                self._recover()
                return
            self._accept()
        else:
            conn = self._conns.get(key.data)
            if conn is None:
                return
            if not _is_ours(conn.sock, conn.ident):
                self._recover()
                return
            try:
                if mask & selectors.EVENT_READ:
                    self._read(conn)
                if mask & selectors.EVENT_WRITE and conn.id in self._conns:
                    self._flush_out(conn)
            except Exception as exc:
                # Whatever went wrong is confined to this viewer: drop it, keep serving the others.
                log_once("conn-error", "dropped a viewer connection after an internal error", exc=exc)
                self._close(conn)

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(64):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of file descriptors (the app's, not ours to take): stop accepting for a while
                # instead of spinning on a listener that stays readable.
                log_once("accept", f"accept() failed on the agent socket ({exc}); pausing for 1 s", exc=exc)
                self._pause_accepting(time.monotonic() + ACCEPT_PAUSE_S)
                return
            sock.setblocking(False)
            ident = _identity(sock)
            try:
                peer_pid, peer_uid, _gid = _PEERCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                )
            except OSError:
                peer_pid, peer_uid = -1, -1
            if peer_uid not in (os.getuid(), 0):
                self.counters.refused_peer += 1
                _send_and_close(sock, f"refused: peer uid {peer_uid} is neither this process's uid nor root")
                continue
            now = time.monotonic()
            if len(self._conns) >= MAX_CONNECTIONS and not self._evict_idle(now):
                self.counters.refused_full += 1
                _send_and_close(sock, f"refused: this agent already serves {MAX_CONNECTIONS} busy viewers")
                continue
            conn = _Conn(sock, self._next_conn_id, now, peer_pid, ident=ident, last_active=now)
            self._next_conn_id += 1
            self._conns[conn.id] = conn
            if self._sel is not None:
                self._sel.register(sock, selectors.EVENT_READ, conn.id)
            self._queue(conn, self.handlers.hello().to_dict())

    def _evict_idle(self, now: float) -> bool:
        """Close the longest-idle viewer (idle for IDLE_EVICT_S at least) to make room; whether one was."""
        idle = [
            c
            for c in self._conns.values()
            if now - c.last_active >= IDLE_EVICT_S and not c.out and not self.handlers.waits_for(c.id)
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        self.counters.closed_idle += 1
        message = f"closed: idle for {now - victim.last_active:.0f} s and another viewer needed the slot"
        self._close(victim, ErrorFrame(message).to_dict())
        return True

    def _pause_accepting(self, until: float) -> None:
        listener = self._listener
        if listener is not None and self._sel is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(listener)
        self._accept_paused_until = until

    def _resume_accepting(self) -> None:
        self._accept_paused_until = None
        listener = self._listener
        if listener is not None and self._sel is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.register(listener, selectors.EVENT_READ, "listen")

    def _read(self, conn: _Conn) -> None:
        if not _is_ours(conn.sock, conn.ident):
            self._close(conn)
            return
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        try:
            messages = conn.decoder.feed(data)
        except ProtocolError as exc:
            self._fatal(conn, f"bad frame: {exc}")
            return
        now = time.monotonic()
        if messages:
            conn.last_active = now
        if not conn.decoder.pending:
            conn.frame_started = None
        elif messages or conn.frame_started is None:
            conn.frame_started = now
        for message in messages:
            if conn.id not in self._conns:
                return
            self._handle(conn, message)

    def _fatal(self, conn: _Conn, message: str) -> None:
        """Say why in an error frame (best effort, without waiting) and close the connection."""
        self._close(conn, ErrorFrame(message).to_dict())

    def _handle(self, conn: _Conn, message: dict[str, Any]) -> None:
        if not conn.greeted:
            try:
                hello = Hello.from_dict(message)
            except ProtocolError as exc:
                self._fatal(conn, f"expected the viewer's hello: {exc}")
                return
            if hello.role != "viewer":
                self._fatal(conn, f"expected a viewer's hello, got role {hello.role!r}")
                return
            conn.greeted = True
            return
        try:
            request = Request.from_dict(message)
        except ProtocolError as exc:
            self._fatal(conn, f"bad request: {exc}")
            return
        try:
            response = self.handlers.dispatch(conn.id, request)
        except Exception as exc:
            log_once(f"method-{request.method}", f"request {request.method!r} failed", exc=exc)
            response = Response(
                request.id, False, error=f"{request.method} failed: {type(exc).__name__}: {exc}"
            )
        if response is not None:
            self._respond(conn, response)

    def _respond(self, conn: _Conn, response: Response) -> None:
        try:
            frame = encode(response.to_dict())
        except ProtocolError as exc:
            frame = encode(
                Response(response.id, False, error=f"the result could not be sent: {exc}").to_dict()
            )
        self._queue_bytes(conn, frame)

    def _finish_jobs(self) -> None:
        """Answer the viewers whose actions are done (those still connected)."""
        for conn_id, response in self.handlers.finished():
            conn = self._conns.get(conn_id)
            if conn is not None:
                conn.last_active = time.monotonic()
                self._respond(conn, response)

    # -- output and closing ----------------------------------------------------------------------------

    def _queue(self, conn: _Conn, message: dict[str, Any]) -> None:
        self._queue_bytes(conn, encode(message))

    def _queue_bytes(self, conn: _Conn, frame: bytes) -> None:
        if conn.out and len(conn.out) + len(frame) > OUTBUF_LIMIT:
            self.counters.closed_slow += 1
            self._close(conn)
            return
        conn.out += frame
        self._flush_out(conn)

    def _flush_out(self, conn: _Conn) -> None:
        if not _is_ours(conn.sock, conn.ident):
            self._close(conn)
            return
        progressed = False
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            del conn.out[:sent]
            progressed = progressed or sent > 0
        if not conn.out:
            conn.stalled_since = None
        elif progressed or conn.stalled_since is None:
            conn.stalled_since = time.monotonic()
        want_write = bool(conn.out)
        if want_write != conn.writing and self._sel is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self._sel.modify(conn.sock, events, conn.id)
            conn.writing = want_write

    def _close(self, conn: _Conn, last: dict[str, Any] | None = None) -> None:
        if self._conns.pop(conn.id, None) is None:
            return
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(conn.sock)
        self.handlers.cancel(conn.id)
        if not _is_ours(conn.sock, conn.ident):
            _let_go(conn.sock, None)
            return
        if last is not None:
            with contextlib.suppress(OSError):
                conn.sock.send(bytes(conn.out) + encode(last))
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _close_server(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn, ErrorFrame("the agent is stopping").to_dict())
        listener = self._listener
        if listener is not None:
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(listener)
            _let_go(listener, self._listener_ident)
        self._listener = self._listener_ident = None
        self.handlers.cancel()

    def housekeeping(self) -> None:
        """The agent thread's periodic check of the sockets, the connections' timeouts and the action's."""
        if self._sel is None:
            return  # never served (or a forked child not serving yet): no socket of ours to look at
        now = time.monotonic()
        paused = self._accept_paused_until
        if paused is not None and now >= paused:
            self._resume_accepting()
        self._recover()
        self._expire_connections(now)
        self.handlers.expire(now)
        if self._listener is not None:
            self._check_socket_file()

    def _expire_connections(self, now: float) -> None:
        """Close viewers that never said hello, send a frame too slowly, idle, or stopped reading."""
        for conn in list(self._conns.values()):
            waiting = self.handlers.waits_for(conn.id)
            if not conn.greeted and now - conn.opened_at > HANDSHAKE_TIMEOUT_S:
                self._close(conn, ErrorFrame("no hello received in time").to_dict())
            elif conn.frame_started is not None and now - conn.frame_started > FRAME_TIMEOUT_S:
                self.counters.closed_frame_timeout += 1
                message = f"a frame took more than {FRAME_TIMEOUT_S:.0f} s to arrive"
                self._close(conn, ErrorFrame(message).to_dict())
            elif conn.stalled_since is not None and now - conn.stalled_since > WRITE_TIMEOUT_S:
                self.counters.closed_slow += 1
                self._close(conn)
            elif not waiting and now - conn.last_active > IDLE_TIMEOUT_S:
                self.counters.closed_idle += 1
                self._close(conn, ErrorFrame(f"closed: idle for {IDLE_TIMEOUT_S:.0f} s").to_dict())

    def _check_socket_file(self) -> None:
        """Our socket file must still be ours: if someone removed it, say so once."""
        path, ino = self.path, self._listen_ino
        if path is None or ino is None:
            return
        try:
            st = os.stat(path)
            ok = stat.S_ISSOCK(st.st_mode) and st.st_ino == ino
        except OSError:
            ok = False
        if not ok and self._listen_ino is not None:
            log_once("socket-gone", f"the agent socket {path} was removed; viewers cannot attach")


def _send_and_close(sock: socket.socket, message: str) -> None:
    with contextlib.suppress(OSError, ProtocolError):
        sock.send(encode(ErrorFrame(message).to_dict()))
    with contextlib.suppress(OSError):
        sock.close()


def _discover_loops() -> None:
    """Watch the app's asyncio loops (perftop.agent.loop), once it uses asyncio."""
    if "asyncio" in sys.modules:  # never import asyncio into an app that does not use it
        from perftop.agent.loop import discover_loops

        discover_loops()


server = Server()
"""The process's one socket server."""
pump.every(TICK_S, server.housekeeping, "agent-housekeeping", "the agent's housekeeping failed")
pump.every(
    LOOP_DISCOVERY_S, _discover_loops, "loop-discovery", "could not look for asyncio loops", first_after=1.0
)
pump.on_exit(server.at_exit)
pump.on_fork(locks=lambda: (server._lock,), before=server.before_fork, in_child=server.after_fork_in_child)


def start(name: str | None = None, socket_dir: str | None = None, max_metrics: int | None = None) -> None:
    """Start the agent: gc pause recording, the agent thread, and the socket. Never raises."""
    try:
        if max_metrics is not None:
            registry.max_metrics = max(1, int(max_metrics))
        gcwatch.install()
        pump.ensure_running()
        server.serve(name, socket_dir)
    except Exception as exc:
        log_once("start", f"could not start the agent: {exc}", exc=exc)


def stop() -> None:
    """Stop serving: close the socket and every viewer, remove the socket file. Recording goes on."""
    try:
        server.stop_serving()
    except Exception as exc:
        log_once("stop", f"could not stop the agent cleanly: {exc}", exc=exc)


def socket_file() -> str | None:
    """The socket this process serves, or None."""
    return server.path if server.serving else None


def _mp_spawned() -> bool:
    """Whether this process is a multiprocessing child started by spawn or forkserver (a fresh
    interpreter, whose agent `perftop run` started, not a fork of the parent's)."""
    process = sys.modules.get("multiprocessing.process")
    parent = getattr(process, "parent_process", None)
    try:
        return parent is not None and parent() is not None
    except Exception:
        return False


def _mp_worker_started(owner: Server) -> None:
    """In a multiprocessing worker (after its finalizers were reset): leave its final stats and remove our
    socket at its exit."""
    util = sys.modules.get("multiprocessing.util")
    finalize = getattr(util, "Finalize", None)
    if finalize is not None:
        try:
            finalize(None, owner._write_final, exitpriority=1)  # before the socket goes: see at_exit
            finalize(None, owner._remove_socket_file, exitpriority=0)
        except Exception as exc:
            log_once("mp-finalize", "could not register the socket cleanup with multiprocessing", exc=exc)


def program_name() -> str:
    """The program's name for people: the module `python -m` runs, else the script's base name. Read from
    the interpreter's own command line: while it starts, when `perftop run` starts the agent, `sys.argv[0]`
    is "-m", then the module's file path (`.../http/server.py`)."""
    args: list[str] = [str(a) for a in getattr(sys, "orig_argv", [])[1:]]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-m":
            return args[i + 1] if i + 1 < len(args) else "python"
        if arg.startswith("-m"):
            return arg[2:]
        if arg in ("-W", "-X", "--check-hash-based-pycs"):
            i += 2
        elif arg.startswith("-") and arg != "-" and not arg.startswith("-c"):
            i += 1
        else:
            break
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 in ("", "-c", "-m", "-"):
        return "python"
    return os.path.basename(argv0) or "python"
