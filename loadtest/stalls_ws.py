# A minimal WebSocket client for loadtest/stalls-ops.sh: connects with a token signed for
# the given sub and role, sends one JSON message if given, reads for N seconds and prints
# how many text messages came. Usage: PORT PATH SECRET SUB ROLE SECONDS [MESSAGE]
# Minimal WebSocket client: connect, optionally send a JSON message, read for N seconds,
# print the number of text messages received.
import base64, hashlib, hmac, json, os, socket, struct, sys, time

def jwt(claims, secret):
    b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
    h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b(json.dumps(claims).encode())
    s = b(hmac.new(secret.encode(), h + b"." + p, hashlib.sha256).digest())
    return (h + b"." + p + b"." + s).decode()

def main():
    port, path, secret, sub, role, seconds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6])
    send = sys.argv[7] if len(sys.argv) > 7 else None
    tok = jwt({"sub": sub, "role": role, "scopes": ["*"], "exp": int(time.time()) + 3600}, secret)
    s = socket.create_connection(("127.0.0.1", int(port)))
    sep = "&" if "?" in path else "?"
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path}{sep}token={tok}&batchMs=0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    if send:
        p = send.encode(); m = os.urandom(4)
        hdr = bytes([0x81]) + (bytes([0x80 | len(p)]) if len(p) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(p)))
        s.sendall(hdr + m + bytes(b ^ m[i % 4] for i, b in enumerate(p)))
    n = 0
    end = time.time() + seconds
    s.settimeout(0.2)
    while time.time() < end:
        try:
            d = s.recv(1 << 20)
            if not d: break
            buf += d
        except socket.timeout:
            pass
        while len(buf) >= 2:
            l = buf[1] & 0x7f; o = 2
            if l == 126:
                if len(buf) < 4: break
                l = struct.unpack(">H", buf[2:4])[0]; o = 4
            elif l == 127:
                if len(buf) < 10: break
                l = struct.unpack(">Q", buf[2:10])[0]; o = 10
            if len(buf) < o + l: break
            if buf[0] & 0x0f == 1: n += 1
            buf = buf[o + l:]
    print(n)

main()
