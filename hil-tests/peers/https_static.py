"""A static HTTPS server for update repositories: Python's own http.server behind TLS.

Usage: https_static.py ROOT CERT KEY
Serves ROOT read-only on 127.0.0.1 on a free port and prints the port on its first line.
Each request is logged to stderr (path and status) so a test can see what was fetched.
"""
import functools
import http.server
import ssl
import sys


def main():
    root, cert, key = sys.argv[1:4]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
