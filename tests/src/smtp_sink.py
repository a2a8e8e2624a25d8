"""The aiosmtpd handler behind the Rust test harness `tests/src/smtp.rs`.

A Maildir sink (aiosmtpd's own `Mailbox`) with what the tests need on top:

- recipients whose local part starts with `reject` get a permanent `550`, `tempfail` a
  transient `451`, so both error paths can be tested against a real server;
- with `YTC_SMTP_USER` / `YTC_SMTP_PASSWORD` set, AUTH PLAIN and LOGIN accept exactly that login
  and MAIL is refused until the client has authenticated;
- every stored message gets `X-Ytc-Tls: yes|no` (was the session encrypted) and
  `X-Ytc-Login` (who authenticated), besides aiosmtpd's `X-Peer`, `X-MailFrom`, `X-RcptTo`;
- with `YTC_SMTP_WATCH_STDIN=1` the server exits when its stdin closes, so a test process that
  dies without running destructors does not leave servers behind.

Run as `python -m aiosmtpd -n -c ytcaption_smtp_sink.SinkMailbox <maildir>`.
"""

import base64
import binascii
import os
import sys
import threading

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword


def _exit_when_stdin_closes():
    sys.stdin.buffer.read()
    os._exit(0)


class SinkMailbox(Mailbox):
    def __init__(self, mail_dir, message_class=None):
        super().__init__(mail_dir, message_class)
        user = os.environ.get("YTC_SMTP_USER")
        password = os.environ.get("YTC_SMTP_PASSWORD")
        self.login = None if user is None else (user.encode(), (password or "").encode())
        if os.environ.get("YTC_SMTP_WATCH_STDIN") == "1":
            threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()

    # -- AUTH (only offered by aiosmtpd once the session is encrypted) --------------------------

    def _check(self, login, password):
        if self.login is not None and (login, password) == self.login:
            return AuthResult(success=True, auth_data=LoginPassword(login, password))
        # handled=False: let aiosmtpd answer 535.
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, server, args):
        if len(args) == 1:
            data = await server.challenge_auth("")
            if data is MISSING:
                return AuthResult(success=False, handled=False)
        else:
            try:
                data = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                return AuthResult(success=False, handled=False)
        parts = data.split(b"\0")
        if len(parts) != 3:
            return AuthResult(success=False, handled=False)
        return self._check(parts[1], parts[2])

    async def auth_LOGIN(self, server, args):
        if len(args) == 1:
            login = await server.challenge_auth("Username:")
        else:
            try:
                login = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                return AuthResult(success=False, handled=False)
        if login is MISSING:
            return AuthResult(success=False, handled=False)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=False)
        return self._check(login, password)

    # -- envelope ---------------------------------------------------------------------------

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.login is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 Mailbox unavailable (test sink)"
        if local.startswith("tempfail"):
            return "451 4.3.0 Try again later (test sink)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = self.prepare_message(session, envelope)
        encrypted = server.transport.get_extra_info("ssl_object") is not None
        message["X-Ytc-Tls"] = "yes" if encrypted else "no"
        auth = getattr(session, "auth_data", None)
        login = getattr(auth, "login", None)
        message["X-Ytc-Login"] = login.decode() if isinstance(login, bytes) else ""
        self.handle_message(message)
        return "250 OK"
