"""Which URLs and addresses an image may come from, judged as the download will connect.

URL parsers disagree on backslashes, ``user:pass@`` parts, control characters and whitespace, so
those are refused, and the host checked is the one urllib3 connects to (urllib, which requests
picks the connection by, must agree). Addresses are judged on the IPv4 address an IPv6 one
embeds, for literal hosts and for every address a name resolves to.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from urllib.parse import unquote, urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import Url, parse_url

from worker.contract.errors import ImageError

DEFAULT_PORTS = {"http": 80, "https": 443}
# Cloud metadata services outside link-local space (AWS's IPv6 one, Alibaba Cloud's).
METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ("fd00:ec2::254", "100.100.100.200")))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SCHEME_AND_HOST = re.compile(r"[^/?#]*(//[^/?#]*)?")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def refuse_ambiguous(url: str) -> None:
    """Refuse what URL parsers read differently: a backslash ends the host for urllib3 but not
    for urllib, which also drops tabs and newlines. A plain space is allowed only after the host,
    where requests percent-encodes it (Label Studio file names have spaces)."""
    if "\\" in url:
        raise ImageError(
            f"{url!r}: a backslash in a URL is refused (URL parsers disagree on where its "
            "host ends)"
        )
    odd = [c for c in url if unicodedata.category(c)[0] in "CZ" and c != " "]
    head = _SCHEME_AND_HOST.match(url)
    if odd or (head and " " in head.group(0)):
        raise ImageError(
            f"{url!r}: control characters or whitespace in a URL are refused (URL parsers "
            "disagree on them)"
        )


def connect_target(url: str) -> Url:
    """``url`` (as prepared by requests) parsed the way urllib3 connects, refused unless it is
    http(s) without ``user:pass@`` and urllib, which requests picks the connection by, agrees."""
    try:
        target = parse_url(url)
        split = urlsplit(url)
        other = (unquote(split.hostname or ""), split.port or DEFAULT_PORTS.get(split.scheme))
    except (LocationParseError, ValueError) as error:
        raise ImageError(f"{url!r} is not a URL camsam can fetch: {error}") from error
    if target.scheme not in DEFAULT_PORTS or not target.host:
        raise ImageError(f"{url}: only http(s) URLs are fetched")
    if target.auth is not None:
        raise ImageError(
            f"{url}: a user:pass@ part in an image URL is refused (it hides the real host); "
            "camsam sends Label Studio's key itself"
        )
    if other != (unquote(target.host.strip("[]").lower()), origin(target)[2]):
        raise ImageError(f"{url}: URL parsers disagree on its host, so it is refused")
    return target


def origin(url: Url) -> tuple[str, str, int]:
    scheme = url.scheme or "http"
    return scheme, (url.host or "").lower(), url.port or DEFAULT_PORTS.get(scheme, 80)


def check_address(target: Url, loopback: bool = True) -> None:
    """Refuse hosts that are or resolve to link-local, multicast or unspecified addresses or a
    cloud metadata service (and loopback ones unless ``loopback``), judged on the IPv4 address
    an IPv6 one embeds."""
    host = unquote((target.host or "").strip("[]"))  # an IPv6 zone may arrive as %25
    try:
        infos = socket.getaddrinfo(host, origin(target)[2], proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        raise ImageError(f"cannot resolve {host}: {error}") from error
    for info in infos:
        check_peer(host, str(info[4][0]), loopback)


def check_peer(host: str, address: str, loopback: bool = True) -> None:
    """The rule of :func:`check_address` for one address ``host`` resolves or connected to.

    Raises:
        ImageError: the address is refused.
    """
    ip = embedded_ipv4(ipaddress.ip_address(address.split("%")[0]))
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        raise ImageError(
            f"{host} resolves to {ip}, a link-local or reserved address: refused (cloud "
            "metadata services live there)"
        )
    if ip in METADATA_ADDRESSES:
        raise ImageError(f"{host} resolves to {ip}, a cloud metadata service: refused")
    if not loopback and ip.is_loopback:
        raise ImageError(
            f"{host} resolves to {ip}, a loopback address: a redirect there is refused unless "
            f"{host} is Label Studio's host or listed in IMAGE_HOSTS"
        )


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped ``::ffff:a.b.c.d``, compatible ``::a.b.c.d``,
    6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``), since packets to it reach that IPv4 host."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or 1 < int(address) < 1 << 32:  # not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address
