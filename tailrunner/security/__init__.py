"""Who may reach tailrunner's servers: TLS, bearer tokens with roles, and open binds.

- :mod:`~tailrunner.security.tls`: certificates for servers and clients;
- :mod:`~tailrunner.security.tokens`: the tokens a server accepts, each ``read`` or ``write``;
- :mod:`~tailrunner.security.auth`: the server interceptor, and which methods only read;
- :mod:`~tailrunner.security.server`: one server's settings, and the rule for non-loopback binds;
- :mod:`~tailrunner.security.channels`: the clients' channels and their token metadata.

See SECURITY.md for what is protected and how to configure it.
"""

from tailrunner.security.server import OPEN, ServerSecurity, is_loopback
from tailrunner.security.tls import ClientTls, ServerTls
from tailrunner.security.tokens import Role, Tokens

__all__ = ["OPEN", "ClientTls", "Role", "ServerSecurity", "ServerTls", "Tokens", "is_loopback"]
