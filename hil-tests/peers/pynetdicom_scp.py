#!/usr/bin/env python3
"""Plain pynetdicom Storage SCP used as a benchmark/reference peer.

Owns nothing but its optional output directory. Accepts every storage SOP
class (plus Verification) in every transfer syntax pynetdicom knows
(implicit/explicit little endian, big endian, deflated, JPEG, JPEG-LS,
JPEG 2000, RLE, ...), answers every C-STORE with Success (0x0000), accepts
any calling/called AE title, and serves up to 10 associations at once.

With --out DIR each received instance is written to DIR/<SOPInstanceUID>.dcm
(file meta + dataset as received; plain write, no fsync - like a typical
SCP). Without --out nothing is stored. Logs at WARNING only (nothing per
instance). Prints "ready" on stdout once listening; runs until SIGTERM or
SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

SUCCESS = 0x0000

# pynetdicom accepts, per presentation context, the first transfer syntax of
# *this* list that the requestor proposed. Order it roughly like DCMTK's
# `storescp +xa`: compressed (and deflated) first, then explicit little
# endian, big endian, implicit - so a file proposed in its own transfer syntax
# alongside uncompressed fallbacks is accepted as is.
UNCOMPRESSED = [ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian]
TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in UNCOMPRESSED] + UNCOMPRESSED


def make_store_handler(out_dir: str | None):
    """C-STORE handler: write the encoded dataset if out_dir is set."""
    if out_dir is None:
        def discard(event):
            return SUCCESS
        return discard

    def store(event):
        uid = str(event.request.AffectedSOPInstanceUID)
        # UIDs are digits and dots; anything else would be a hostile name.
        name = uid if uid and all(c.isdigit() or c == "." for c in uid) else "unnamed"
        with open(os.path.join(out_dir, f"{name}.dcm"), "wb") as f:
            # Preamble + file meta + the dataset bytes exactly as received.
            f.write(event.encoded_dataset(include_meta=True))
        return SUCCESS

    return store


def main() -> int:
    parser = argparse.ArgumentParser(description="pynetdicom Storage SCP peer")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ae-title", default="ANY-SCP")
    parser.add_argument("--out", metavar="DIR", help="write received instances here")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if args.out:
        os.makedirs(args.out, exist_ok=True)

    ae = AE(ae_title=args.ae_title)
    ae.maximum_associations = 10
    ae.maximum_pdu_size = 0  # 0 = no limit on PDUs the peer sends us
    ae.require_called_aet = False
    ae.require_calling_aet = []
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, TRANSFER_SYNTAXES)

    server = ae.start_server(
        ("0.0.0.0", args.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, make_store_handler(args.out))],
    )

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print("ready", flush=True)
    while not stop.wait(3600):
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
