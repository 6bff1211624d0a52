"""The SIP torture-test messages of RFC 4475 (and two of RFC 5118), as bytes.

Transcribed from the RFC's message text (as quoted in the torture tests of reSIProcate and
NkSIP); lines end in CRLF, folded lines keep their leading whitespace, the RFC's <hex> and
<repeat> notations are written out as the bytes they stand for, and the binary part of
mpart01 is the 342 bytes its Content-Length of 553 accounts for. Each message keeps the
Content-Length the RFC gives it. The expected outcome is the one the RFC documents for a
receiving element; where the RFC allows either rejecting or accepting, the comment says which
this parser does.
"""

from __future__ import annotations


def msg(*lines: str | bytes, body: bytes = b"") -> bytes:
    """Join header lines with CRLF, add the empty line, then the body."""
    parts = [line.encode("utf-8") if isinstance(line, str) else line for line in lines]
    return b"\r\n".join(parts) + b"\r\n\r\n" + body


def sdp(origin: str, connection: str | None = None, timing: str = "0 0") -> bytes:
    """The SDP body most RFC 4475 messages carry."""
    return (
        "v=0\r\n"
        f"o=mhandley 29739 7272939 IN IP4 {origin}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {connection or origin}\r\n"
        f"t={timing}\r\n"
        "m=audio 49217 RTP/AVP 0 12\r\n"
        "m=video 3227 RTP/AVP 31\r\n"
        "a=rtpmap:31 LPC\r\n"
    ).encode()


# --- 3.1.1 Valid messages ---------------------------------------------------------------------

WSINV = msg(  # 3.1.1.1 A short tortuous INVITE
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
    "TO :",
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
    'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>',
    "  ;",
    "  tag = 98asjd8",
    "MaX-fOrWaRdS: 0068",
    "Call-ID: wsinv.ndaksdj@192.0.2.1",
    "Content-Length   : 150",
    "cseq: 0009",
    "  INVITE",
    "Via  : SIP  /   2.0",
    " /UDP",
    "    192.0.2.2;branch=390skdjuw",
    "s :",
    "NewFangledHeader:   newfangled value",
    " continued newfangled value",
    "UnknownHeaderWithUnusualValue: ;;,,;;,;",
    "Content-Type: application/sdp",
    "Route:",
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
    "  branch  =   z9hG4bK9ikj8  ,",
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
    " z9hG4bK30239",
    'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =',
    "      newvalue ;",
    "  secondparam ; q = 0.33",
    body=sdp("192.0.2.3", "192.0.2.4"),
)

INTMETH_METHOD = "!interesting-Method0123456789_*+`.%indeed'~"
INTMETH = msg(  # 3.1.1.2 Wide range of valid characters
    INTMETH_METHOD + " sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!"
    "*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0",
    "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
    b'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" '
    b"<sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>",
    b"From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
    b'"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9"'
    b";tag=_token~1'+`*%!-.",
    "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
    "CSeq: 139122385 " + INTMETH_METHOD,
    "Max-Forwards: 255",
    b"extensionHeader-!.%*+_`'~:\xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb",
    "Content-Length: 0",
)

ESC01 = msg(  # 3.1.1.3 Valid use of the % escaping mechanism
    "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
    "To: sip:%75se%72@example.com",
    "From: <sip:I%20have%20spaces@example.net>;tag=938",
    "Max-Forwards: 87",
    "i: esc01.239409asdfakjkn23onasd0-3234",
    "CSeq: 234234 INVITE",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
    "C: application/sdp",
    "Contact:",
    "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
    "Content-Length: 150",
    body=sdp("192.0.2.1"),
)

ESCNULL = msg(  # 3.1.1.4 Escaped nulls in URIs
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:null-%00-null@example.com",
    "From: sip:null-%00-null@example.com;tag=839923423",
    "Max-Forwards: 70",
    "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
    "CSeq: 14398234 REGISTER",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
    "Contact: <sip:%00@host5.example.com>",
    "Contact: <sip:%00%00@host5.example.com>",
    "L:0",
)

ESC02 = msg(  # 3.1.1.5 Use of % when it is not an escape
    "RE%47IST%45R sip:registrar.example.com SIP/2.0",
    'To: "%Z%45" <sip:resource@example.com>',
    'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
    "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
    "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234",
    "CSeq: 29344 RE%47IST%45R",
    "Max-Forwards: 70",
    "Contact: <sip:alias1@host1.example.com>",
    "C%6Fntact: <sip:alias2@host2.example.com>",
    "Contact: <sip:alias3@host3.example.com>",
    "l: 0",
)

LWSDISP = msg(  # 3.1.1.6 Message with no LWS between display name and <
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: caller<sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID: lwsdisp.1234abcd@funky.example.com",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
    "l: 0",
)

_LONG = "long" * 20
LONGREQ_VIA_HOSTS = [f"sip{n}.example.com" for n in range(33, 0, -1)]
LONGREQ = msg(  # 3.1.1.7 Long values in header fields
    "INVITE sip:user@example.com SIP/2.0",
    'To: "I have a user name of ' + "extreme " * 10 + 'proportion"'
    " <sip:user@example.com:6000;unknownparam1=very" + _LONG + "value;"
    "longparam" + "name" * 26 + "=shortvalue;very" + "long" * 24 + "ParameterNameWithNoValue>",
    "F: sip:" + "amazinglylongcallername" * 5 + "@example.net;tag=12" + "982" * 50 + "424;"
    "unknownheaderparam" + "name" * 20 + "=unknowheaderparam" + "value" * 15 + ";"
    "unknownValuelessparam" + "nameparam" * 9 + "name",
    "Call-ID: longreq.one" + "really" * 20 + "longcallid",
    "CSeq: 3882340 INVITE",
    "Unknown-"
    + "Long" * 20
    + "-Name:unknown-"
    + _LONG
    + "-value;unknown-"
    + _LONG
    + "-parameter-name =unknown-"
    + _LONG
    + "-parameter-value",
    "Via: SIP/2.0/TCP sip33.example.com",
    "v: SIP/2.0/TCP sip32.example.com",
    "V: SIP/2.0/TCP sip31.example.com",
    "Via: SIP/2.0/TCP sip30.example.com",
    "ViA: SIP/2.0/TCP sip29.example.com",
    "VIa: SIP/2.0/TCP sip28.example.com",
    "VIA: SIP/2.0/TCP sip27.example.com",
    "via: SIP/2.0/TCP sip26.example.com",
    "viA: SIP/2.0/TCP sip25.example.com",
    "vIa: SIP/2.0/TCP sip24.example.com",
    "vIA: SIP/2.0/TCP sip23.example.com",
    "V :  SIP/2.0/TCP sip22.example.com",
    "v :  SIP/2.0/TCP sip21.example.com",
    "V  : SIP/2.0/TCP sip20.example.com",
    "v  : SIP/2.0/TCP sip19.example.com",
    "Via : SIP/2.0/TCP sip18.example.com",
    "Via  : SIP/2.0/TCP sip17.example.com",
    *(f"Via: SIP/2.0/TCP sip{n}.example.com" for n in range(16, 0, -1)),
    "Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=very"
    + "long" * 50
    + "branchvalue",
    "Max-Forwards: 70",
    "Contact: <sip:" + "amazinglylongcallername" * 5 + "@host5.example.net>",
    "Content-Type: application/sdp",
    "l: 150",
    body=sdp("192.0.2.1"),
)

DBLREQ_TRAILER = msg(
    "INVITE sip:joe@example.com SIP/2.0",
    "t: sip:joe@example.com",
    "From: sip:caller@example.net;tag=141334",
    "Max-Forwards: 8",
    "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.15"),
)
DBLREQ = (
    msg(  # 3.1.1.8 Extra trailing octets in a UDP datagram
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:j.user@example.com;tag=43251j3j324",
        "Max-Forwards: 8",
        "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
        "Contact: sip:j.user@host.example.com",
        "CSeq: 8 REGISTER",
        "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
        "Content-Length: 0",
    )
    + DBLREQ_TRAILER
)

SEMIURI = msg(  # 3.1.1.9 Semicolon-separated parameters in URI user part
    "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "From: sip:caller@example.org;tag=33242",
    "Max-Forwards: 3",
    "Call-ID: semiuri.0ha0isndaksdj",
    "CSeq: 8 OPTIONS",
    "Accept: application/sdp, application/pkcs7-mime,",
    "  multipart/mixed, multipart/signed,",
    "  message/sip, message/sipfrag",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw",
    "l: 0",
)

TRANSPORTS = msg(  # 3.1.1.10 Varied and unknown transport types
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: <sip:caller@example.com>;tag=323",
    "Max-Forwards: 70",
    "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
    "Accept: application/sdp",
    "CSeq: 60 OPTIONS",
    "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
    "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
    "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
    "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
    "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
    "l: 0",
)

MPART01_BINARY = bytes.fromhex(
    "30820152 06092a86 4886f70d 010702a0 82014330 82013f02 01013109 30070605 2b0e0302"
    "1a300b06 092a8648 86f70d01 07013182 01203082 011c0201 01307c30 70310b30 09060355"
    "04061302 55533113 30110603 55040813 0a43616c 69666f72 6e696131 11300f06 03550407"
    "13085361 6e204a6f 7365310e 300c0603 55040a13 05736970 69743129 30270603 55040b13"
    "20536970 69742054 65737420 43657274 69666963 61746520 41757468 6f726974 79020801"
    "95007102 33011330 0706052b 0e03021a 300d0609 2a864886 f70d0101 01050004 81808ef4"
    "66f948f0 522dd2e5 978e9d95 aae9f2fe 15a06659 716292e8 da2aa8d8 350a68ce ffae3cbd"
    "2bff1675 ddd5648e 593dd647 28f26220 f7e94174 9e330d9a 15edabdb 93d10c42 102e7b72"
    "89d29cc0 c9ae2efb c7c0cff9 172f3b02 7e4fc027 e1546de4 b6aa3abb 3e66cccb 5dd6c64b"
    "8383149c b8e6ff18 2d944fe5 7b65bc99 d005"
)
MPART01_BODY = (
    b"--7a9cbec02ceef655\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"Hello\r\n"
    b"--7a9cbec02ceef655\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n" + MPART01_BINARY + b"\r\n"
    b"--7a9cbec02ceef655--\r\n"
)
MPART01 = msg(  # 3.1.1.11 Multipart MIME message (binary part with 0x00 bytes)
    "MESSAGE sip:kumiko@example.org SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport",
    "Max-Forwards: 70",
    "Route: <sip:127.0.0.1:5080>",
    "Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+"
    "813gvYjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivU"
    "hkMWYUA=",
    "Contact: <sip:fluffy@127.0.0.1:5070>",
    "To: <sip:kumiko@example.org>",
    "From: <sip:fluffy@example.com>;tag=2fb0dcc9",
    "Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
    "CSeq: 1 MESSAGE",
    "Content-Transfer-Encoding: binary",
    "Content-Type: multipart/mixed;boundary=7a9cbec02ceef655",
    "Date: Sat, 15 Oct 2005 04:44:56 GMT",
    "User-Agent: SIPimp.org/0.2.5 (curses)",
    "Content-Length: 553",
    body=MPART01_BODY,
)

UNREASON_PHRASE = "= 2**3 * 5**2 но сто девяносто девять - простое"
UNREASON = msg(  # 3.1.1.12 Unusual reason phrase
    "SIP/2.0 200 " + UNREASON_PHRASE,
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
    "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
    "CSeq: 35 INVITE",
    "From: sip:user@example.com;tag=11141343",
    "To: sip:user@example.edu;tag=2229",
    "Content-Length: 154",
    "Content-Type: application/sdp",
    "Contact: <sip:user@host198.example.com>",
    body=sdp("192.0.2.198"),
)

NOREASON = msg(  # 3.1.1.13 Empty reason phrase
    "SIP/2.0 100 ",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
    "Call-ID: noreason.asndj203insdf99223ndf",
    "CSeq: 35 INVITE",
    "From: <sip:user@example.com>;tag=39ansfi3",
    "To: <sip:user@example.edu>;tag=902jndnke3",
    "Content-Length: 0",
    "Contact: <sip:user@host105.example.com>",
)

# --- 3.1.2 Invalid messages -------------------------------------------------------------------

BADINV01 = msg(  # 3.1.2.1 Extraneous header field separators -> 400
    "INVITE sip:user@example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=134161461246",
    "Max-Forwards: 7",
    "Call-ID: badinv01.0ha0isndaksdjasdf3234nas",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
    'Contact: "Joe" <sip:joe@example.org>;;;;',
    "Content-Length: 152",
    "Content-Type: application/sdp",
    body=sdp("192.0.2.15"),
)

CLERR = msg(  # 3.1.2.2 Content-Length larger than the message -> 400 over UDP
    "INVITE sip:user@example.com SIP/2.0",
    "Max-Forwards: 80",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=93942939o2",
    "Contact: <sip:caller@hungry.example.net>",
    "Call-ID: clerr.0ha0isndaksdjweiafasdk3",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523",
    "Content-Type: application/sdp",
    "Content-Length: 9999",
    body=sdp("192.0.2.155"),
)

NCL = msg(  # 3.1.2.3 Negative Content-Length -> error
    "INVITE sip:user@example.com SIP/2.0",
    "Max-Forwards: 254",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=32394234",
    "Call-ID: ncl.0ha0isndaksdj2193423r542w35",
    "CSeq: 0 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw",
    "Contact: <sip:caller@example53.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: -999",
    body=sdp("192.0.2.53"),
)

SCALAR02 = msg(  # 3.1.2.4 Request scalar fields with overlarge values -> 400 (CSeq)
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
    "To: <sip:user@example.com>",
    "From: <sip:user@example.com>;tag=239232jh3",
    "CSeq: 36893488147419103232 REGISTER",
    "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
    "Max-Forwards: 300",
    "Expires: 1" + "0" * 100,
    "Contact: <sip:user@host129.example.com>",
    "  ;expires=280297596632815",
    "Content-Length: 0",
)

SCALARLG = msg(  # 3.1.2.5 Response scalar fields with overlarge values -> discard
    "SIP/2.0 503 Service Unavailable",
    "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129",
    "To: <sip:user@example.com>",
    "From: <sip:other@example.net>;tag=2easdjfejw",
    "CSeq: 9292394834772304023312 OPTIONS",
    "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r",
    "Retry-After: 949302838503028349304023988",
    'Warning: 1812 overture "In Progress"',
    "Content-Length: 0",
)

QUOTBAL = msg(  # 3.1.2.6 Unterminated quoted string in display name -> 400
    "INVITE sip:user@example.com SIP/2.0",
    'To: "Mr. J. User <sip:j.user@example.com>',
    "From: sip:caller@example.net;tag=93334",
    "Max-Forwards: 10",
    "Call-ID: quotbal.aksdj",
    "Contact: <sip:caller@host59.example.net>",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234",
    "Content-Type: application/sdp",
    "Content-Length: 152",
    body=sdp("192.0.2.15"),
)

LTGTRURI = msg(  # 3.1.2.7 <> enclosing Request-URI -> 400
    "INVITE <sip:user@example.com> SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=39291",
    "Max-Forwards: 23",
    "Call-ID: ltgtruri.1@192.0.2.5",
    "CSeq: 1 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.5",
    "Contact: <sip:caller@host5.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 159",
    body=sdp("192.0.2.5", timing="3149328700 0"),
)

LWSRURI = msg(  # 3.1.2.8 Malformed SIP Request-URI (embedded LWS) -> 400
    "INVITE sip:user@example.com; lr SIP/2.0",
    "To: sip:user@example.com;tag=3xfe-9921883-z9f",
    "From: sip:caller@example.net;tag=231413434",
    "Max-Forwards: 5",
    "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423",
    "CSeq: 2130706432 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395",
    "Contact: <sip:caller@host1.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 159",
    body=sdp("192.0.2.1", timing="3149328700 0"),
)

LWSSTART = msg(  # 3.1.2.9 Multiple SP separating Request-Line elements -> may reject; we do
    "INVITE  sip:user@example.com  SIP/2.0",
    "Max-Forwards: 8",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=8814",
    "Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com",
    "CSeq: 1893884 INVITE",
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923",
    "Contact: <sip:caller@host1.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.1"),
)

TRWS = msg(  # 3.1.2.10 SP characters at end of Request-Line -> may reject; we do
    "OPTIONS sip:remote-target@example.com SIP/2.0  ",
    "Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093",
    "To: <sip:remote-target@example.com>",
    "From: <sip:local-resource@example.com>;tag=329429089",
    "Call-ID: trws.oicu34958239neffasdhr2345r",
    "Accept: application/sdp",
    "CSeq: 238923 OPTIONS",
    "Max-Forwards: 70",
    "Content-Length: 0",
)

ESCRURI = msg(  # 3.1.2.11 Escaped headers in SIP Request-URI -> may reject; we do
    "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=341518",
    "Max-Forwards: 7",
    "Contact: <sip:caller@host39923.example.net>",
    "Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5",
    "CSeq: 149209342 INVITE",
    "Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.1"),
)

BADDATE = msg(  # 3.1.2.12 Invalid time zone in Date -> may ignore Date; we accept
    "INVITE sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=2234923",
    "Max-Forwards: 70",
    "Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234",
    "CSeq: 1392934 INVITE",
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
    "Date: Fri, 01 Jan 2010 16:00:00 EST",
    "Contact: <sip:caller@host5.example.net>",
    "Content-Type: application/sdp",
    "Content-Length: 150",
    body=sdp("192.0.2.5"),
)

REGBADCT = msg(  # 3.1.2.13 Failure to enclose name-addr URI in <> -> 400
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:user@example.com;tag=998332",
    "Max-Forwards: 70",
    "Call-ID: regbadct.k345asrl3fdbv@10.0.0.1",
    "CSeq: 1 REGISTER",
    "Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw",
    "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E",
    "l: 0",
)

BADASPEC = msg(  # 3.1.2.14 Spaces within addr-spec -> may reject; we do
    "OPTIONS sip:user@example.org SIP/2.0",
    "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234",
    "Max-Forwards: 70",
    'From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423',
    'To: "Watson, Thomas" < sip:t.watson@example.org >',
    "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3",
    "Accept: application/sdp",
    "CSeq: 3923239 OPTIONS",
    "l: 0",
)

BADDN = msg(  # 3.1.2.15 Non-token characters in display name -> 400
    "OPTIONS sip:t.watson@example.org SIP/2.0",
    "Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw",
    "Max-Forwards:      70",
    "From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
    "To:      Watson, Thomas <sip:t.watson@example.org>",
    "Call-ID: baddn.31415@c.example.com",
    "Accept: application/sdp",
    "CSeq:    3923239 OPTIONS",
    "l: 0",
)

BADVERS = msg(  # 3.1.2.16 Unknown protocol version -> 505
    "OPTIONS sip:t.watson@example.org SIP/7.0",
    "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
    "Max-Forwards:     70",
    "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
    "To:      T. Watson <sip:t.watson@example.org>",
    "Call-ID: badvers.31417@c.example.com",
    "CSeq:    1 OPTIONS",
    "l: 0",
)

MISMATCH01 = msg(  # 3.1.2.17 Start line and CSeq method mismatch -> 400
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=34525",
    "Max-Forwards: 6",
    "Call-ID: mismatch01.dj0234sxdfl3",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
    "l: 0",
)

MISMATCH02 = msg(  # 3.1.2.18 Unknown method with CSeq method mismatch -> 501 or 400; we 400
    "NEWMETHOD sip:user@example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=34525",
    "Max-Forwards: 6",
    "Call-ID: mismatch02.dj0234sxdfl3",
    "CSeq: 8 INVITE",
    "Contact: <sip:caller@host.example.net>",
    "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw",
    "Content-Type: application/sdp",
    "l: 138",
    body=(
        b"v=0\r\n"
        b"o=mhandley 29739 7272939 IN IP4 192.0.2.1\r\n"
        b"c=IN IP4 192.0.2.1\r\n"
        b"m=audio 49217 RTP/AVP 0 12\r\n"
        b"m=video 3227 RTP/AVP 31\r\n"
        b"a=rtpmap:31 LPC\r\n"
    ),
)

BIGCODE = msg(  # 3.1.2.19 Overlarge response code -> discard
    "SIP/2.0 4294967301 better not break the receiver",
    "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
    "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i",
    "CSeq: 353494 INVITE",
    "From: <sip:user@example.com>;tag=39ansfi3",
    "To: <sip:user@example.edu>;tag=902jndnke3",
    "Content-Length: 0",
    "Contact: <sip:user@host105.example.com>",
)

# --- 3.2 Transaction layer, 3.3 application layer, 3.4 backward compatibility -----------------

BADBRANCH = msg(  # 3.2.1 Missing transaction identifier -> parse; RFC 2543-style matching
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.org;tag=33242",
    "Max-Forwards: 3",
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK",
    "Accept: application/sdp",
    "Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n",
    "CSeq: 8 OPTIONS",
    "l: 0",
)

INSUF = msg(  # 3.3.1 Missing required header fields -> 400
    "INVITE sip:user@example.com SIP/2.0",
    "CSeq: 193942 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf",
    "Content-Type: application/sdp",
    "l: 152",
    body=sdp("192.0.2.95"),
)

UNKSCM = msg(  # 3.3.2 Request-URI with unknown scheme -> parse; application answers 416
    "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=384",
    "Max-Forwards: 3",
    "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34",
    "CSeq: 3923423 OPTIONS",
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
    "Content-Length: 0",
)

NOVELSC = msg(  # 3.3.3 Request-URI with known but atypical scheme -> parse; 416
    "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=384",
    "Max-Forwards: 3",
    "Call-ID: novelsc.asdfasser0q239nwsdfasdkl34",
    "CSeq: 3923423 OPTIONS",
    "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
    "Content-Length: 0",
)

UNKSM2 = msg(  # 3.3.4 Unknown URI schemes in header fields -> parse; registrar answers 416
    "REGISTER sip:example.com SIP/2.0",
    "To: isbn:2983792873",
    "From: <http://www.example.com>;tag=3234233",
    "Call-ID: unksm2.daksdj@hyphenated-host.example.com",
    "CSeq: 234902 REGISTER",
    "Max-Forwards: 70",
    "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw",
    "Contact: <name:John_Smith>",
    "l: 0",
)

BEXT01 = msg(  # 3.3.5 Proxy-Require and Require -> parse; application answers 420
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "From: sip:caller@example.net;tag=242etr",
    "Max-Forwards: 6",
    "Call-ID: bext01.0ha0isndaksdj",
    "Require: nothingSupportsThis, nothingSupportsThisEither",
    "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis",
    "CSeq: 8 OPTIONS",
    "Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw",
    "Content-Length: 0",
)

INVUT = msg(  # 3.3.6 Unknown Content-Type -> parse; application answers 415
    "INVITE sip:user@example.com SIP/2.0",
    "Contact: <sip:caller@host5.example.net>",
    "To: sip:j.user@example.com",
    "From: sip:caller@example.net;tag=8392034",
    "Max-Forwards: 70",
    "Call-ID: invut.0ha0isndaksdjadsfij34n23d",
    "CSeq: 235448 INVITE",
    "Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw",
    "Content-Type: application/unknownformat",
    "Content-Length: 40",
    body=b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n',
)

REGAUT01 = msg(  # 3.3.7 Unknown authorization scheme -> parse; registrar challenges (401)
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:j.user@example.com",
    "From: sip:j.user@example.com;tag=87321hj23128",
    "Max-Forwards: 8",
    "Call-ID: regaut01.0ha0isndaksdj",
    "CSeq: 9338 REGISTER",
    "Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw",
    "Authorization: NoOneKnowsThisScheme opaque-data=here",
    "Content-Length:0",
)

MULTI01 = msg(  # 3.3.8 Multiple values in single-value required fields -> 400
    "INVITE sip:user@company.com SIP/2.0",
    "Contact: <sip:caller@host25.example.net>",
    "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "CSeq: 5 INVITE",
    "Call-ID: multi01.98asdh@192.0.2.1",
    "CSeq: 59 INVITE",
    "Call-ID: multi01.98asdh@192.0.2.2",
    "From: sip:caller@example.com;tag=3413415",
    "To: sip:user@example.com",
    "To: sip:other@example.net",
    "From: sip:caller@example.net;tag=2923420123",
    "Content-Type: application/sdp",
    "l: 154",
    "Contact: <sip:caller@host36.example.net>",
    "Max-Forwards: 5",
    body=sdp("192.0.2.25"),
)

MCL01 = msg(  # 3.3.9 Multiple Content-Length values -> 400
    "OPTIONS sip:user@example.com SIP/2.0",
    "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423",
    "To: sip:user@example.com",
    "From: sip:other@example.net;tag=3923942",
    "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf",
    "CSeq: 15932 OPTIONS",
    "Content-Length: 13",
    "Max-Forwards: 60",
    "Content-Length: 5",
    "Content-Type: text/plain",
    body=b"There's no way to know how many octets are supposed to be here.\r\n",
)

BCAST = msg(  # 3.3.10 200 OK response with broadcast Via -> parse; the UA drops it
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
    "Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23",
    "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf",
    "CSeq: 35 INVITE",
    "From: sip:user@example.com;tag=11141343",
    "To: sip:user@example.edu;tag=2229",
    "Content-Length: 154",
    "Content-Type: application/sdp",
    "Contact: <sip:user@host28.example.com>",
    body=sdp("192.0.2.198"),
)

ZEROMF = msg(  # 3.3.11 Max-Forwards of zero -> parse; a UAS answers OPTIONS normally
    "OPTIONS sip:user@example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:caller@example.net;tag=3ghsd41",
    "Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas",
    "CSeq: 39234321 OPTIONS",
    "Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i",
    "Max-Forwards: 0",
    "Content-Length: 0",
)

CPARAM01 = msg(  # 3.3.12 REGISTER with a contact header parameter
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe",
    "To: sip:watson@example.com",
    "Call-ID: cparam01.70710@saturn.example.com",
    "CSeq: 2 REGISTER",
    "Contact: sip:+19725552222@gw1.example.net;unknownparam",
    "l: 0",
)

CPARAM02 = msg(  # 3.3.13 REGISTER with a URL parameter
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "From: sip:watson@example.com;tag=838293",
    "To: sip:watson@example.com",
    "Call-ID: cparam02.70710@saturn.example.com",
    "CSeq: 3 REGISTER",
    "Contact: <sip:+19725552222@gw1.example.net;unknownparam>",
    "l: 0",
)

REGESCRT = msg(  # 3.3.14 REGISTER with a URL escaped header
    "REGISTER sip:example.com SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:user@example.com;tag=8",
    "Max-Forwards: 70",
    "Call-ID: regescrt.k345asrl3fdbv@192.0.2.1",
    "CSeq: 14398234 REGISTER",
    "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
    "M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
    "L:0",
)

SDP01 = msg(  # 3.3.15 Unacceptable Accept offering -> parse; application answers 406
    "INVITE sip:user@example.com SIP/2.0",
    "To: sip:j_user@example.com",
    "Contact: <sip:caller@host15.example.net>",
    "From: sip:caller@example.net;tag=234",
    "Max-Forwards: 5",
    "Call-ID: sdp01.ndaksdj9342dasdd",
    "Accept: text/nobodyKnowsThis",
    "CSeq: 8 INVITE",
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw",
    "Content-Length: 150",
    "Content-Type: application/sdp",
    body=sdp("192.0.2.5"),
)

INV2543 = msg(  # 3.4.1 INVITE with RFC 2543 syntax (no branch, no Max-Forwards/Content-Length)
    "INVITE sip:UserB@example.com SIP/2.0",
    "Via: SIP/2.0/UDP iftgw.example.com",
    "From: <sip:+13035551111@ift.client.example.net;user=phone>",
    "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>",
    "To: sip:+16505552222@ss1.example.net;user=phone",
    "Call-ID: inv2543.1717@ift.client.example.com",
    "CSeq: 56 INVITE",
    "Content-Type: application/sdp",
    body=(
        b"v=0\r\n"
        b"o=mhandley 29739 7272939 IN IP4 192.0.2.5\r\n"
        b"s=-\r\n"
        b"c=IN IP4 192.0.2.5\r\n"
        b"t=0 0\r\n"
        b"m=audio 49217 RTP/AVP 0\r\n"
    ),
)

# --- RFC 5118 (IPv6 torture tests) -------------------------------------------------------------

IPV6_REGISTER = msg(  # RFC 5118 §4.1 Valid SIP message with an IPv6 reference
    "REGISTER sip:[2001:db8::10] SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:user@example.com;tag=81x2",
    "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
    "Call-ID: SSG9559905523997077@hlau_4100",
    "Max-Forwards: 70",
    'Contact: "Caller" <sip:caller@[2001:db8::1]>',
    "CSeq: 98176 REGISTER",
    "Content-Length: 0",
)

IPV6_NO_BRACKETS = msg(  # RFC 5118 §4.2 IPv6 reference without [] in the Request-URI -> 400
    "REGISTER sip:2001:db8::10 SIP/2.0",
    "To: sip:user@example.com",
    "From: sip:user@example.com;tag=81x2",
    "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
    "Call-ID: SSG9559905523997077@hlau_4100",
    "Max-Forwards: 70",
    'Contact: "Caller" <sip:caller@[2001:db8::1]>',
    "CSeq: 98176 REGISTER",
    "Content-Length: 0",
)

VALID = {
    "wsinv": WSINV,
    "intmeth": INTMETH,
    "esc01": ESC01,
    "escnull": ESCNULL,
    "esc02": ESC02,
    "lwsdisp": LWSDISP,
    "longreq": LONGREQ,
    "dblreq": DBLREQ,
    "semiuri": SEMIURI,
    "transports": TRANSPORTS,
    "mpart01": MPART01,
    "unreason": UNREASON,
    "noreason": NOREASON,
    "baddate": BADDATE,
    "badbranch": BADBRANCH,
    "unkscm": UNKSCM,
    "novelsc": NOVELSC,
    "unksm2": UNKSM2,
    "bext01": BEXT01,
    "invut": INVUT,
    "regaut01": REGAUT01,
    "bcast": BCAST,
    "zeromf": ZEROMF,
    "cparam01": CPARAM01,
    "cparam02": CPARAM02,
    "regescrt": REGESCRT,
    "sdp01": SDP01,
    "inv2543": INV2543,
    "rfc5118-4.1": IPV6_REGISTER,
}
"""Messages a parser must accept (RFC 4475 §3.1.1, §3.2-3.4 and those it lets us accept)."""

REJECTED_REQUESTS = {
    "badinv01": (BADINV01, 400),
    "clerr": (CLERR, 400),
    "ncl": (NCL, 400),
    "scalar02": (SCALAR02, 400),
    "quotbal": (QUOTBAL, 400),
    "ltgtruri": (LTGTRURI, 400),
    "lwsruri": (LWSRURI, 400),
    "lwsstart": (LWSSTART, 400),
    "trws": (TRWS, 400),
    "escruri": (ESCRURI, 400),
    "regbadct": (REGBADCT, 400),
    "badaspec": (BADASPEC, 400),
    "baddn": (BADDN, 400),
    "badvers": (BADVERS, 505),
    "mismatch01": (MISMATCH01, 400),
    "mismatch02": (MISMATCH02, 400),
    "insuf": (INSUF, 400),
    "multi01": (MULTI01, 400),
    "mcl01": (MCL01, 400),
    "rfc5118-4.2": (IPV6_NO_BRACKETS, 400),
}
"""Requests answered with an error status (RFC 4475 §3.1.2, §3.3.1, §3.3.8-9)."""

DROPPED_RESPONSES = {"scalarlg": SCALARLG, "bigcode": BIGCODE}
"""Responses a receiver discards (RFC 4475 §3.1.2.5, §3.1.2.19)."""
