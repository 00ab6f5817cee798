#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the project's real tables.

dmar: the two DMARs QEMU 10 builds (hex in arch/vtd/src/dmar/tests.rs); acpi: each of them
behind an RSDP (ACPI 1.0 -> RSDT and 2.0 -> XSDT) in the layout the acpi target reads; iort
and devicetree: QEMU 10's `virt` tables from arch/smmuv3/tests/data; smmu_guest and vtd_guest:
a valid guest entry followed by commands/descriptors of every kind a guest sends. Run from
anywhere; rerun when the test data changes.
"""
import pathlib
import re
import struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = pathlib.Path(__file__).resolve().parent
DATA = ROOT / "arch/smmuv3/tests/data"


def put(target, name, data):
    d = SEEDS / target
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(data)


def fix(t, at):
    t[at] = 0
    t[at] = (-sum(t)) & 0xFF


def qemu_dmars():
    src = (ROOT / "arch/vtd/src/dmar/tests.rs").read_text()
    out = {}
    for name in ("QEMU_DMAR", "QEMU_DMAR_ATS"):
        m = re.search(r'const %s: &str = "([^;]*)";' % name, src)
        out[name.lower()] = bytes.fromhex(re.sub(r'[\s\\"]', "", m.group(1)))
    return out


def sdt(sig, body):
    t = bytearray(sig + struct.pack("<IBB", 36 + len(body), 1, 0) + b"BOCHS " + b"BXPC    "
                  + struct.pack("<I", 1) + b"BXPC" + struct.pack("<I", 1) + body)
    fix(t, 9)
    return bytes(t)


BASE = 0xE0000


def acpi_image(dmar, xsdt):
    """2 bytes of RSDP offset, then memory at BASE: RSDP at 0, root table at 0x40, DMAR at 0x100."""
    mem = bytearray(0x100 + len(dmar))
    mem[0x100:] = dmar
    if xsdt:
        root = sdt(b"XSDT", struct.pack("<Q", BASE + 0x100))
        # ACPI 2.0 RSDP: the 1.0 part (checksum at 8 over 20 bytes), then length, XSDT
        # address and the extended checksum (at 32, over all 36 bytes).
        rsdp = bytearray(b"RSD PTR " + b"\0" + b"BOCHS " + b"\x02" + struct.pack("<I", 0)
                         + struct.pack("<IQ", 36, BASE + 0x40) + b"\0\0\0\0")
        first = rsdp[:20]
        fix(first, 8)
        rsdp[8] = first[8]
        fix(rsdp, 32)
    else:
        root = sdt(b"RSDT", struct.pack("<I", BASE + 0x100))
        rsdp = bytearray(b"RSD PTR " + b"\0" + b"BOCHS " + b"\0" + struct.pack("<I", BASE + 0x40))
        fix(rsdp, 8)
    mem[0:len(rsdp)] = rsdp
    mem[0x40:0x40 + len(root)] = root
    return struct.pack("<H", 0) + bytes(mem)


def words(*ws):
    return b"".join(struct.pack("<Q", w) for w in ws)


def main():
    for name, dmar in qemu_dmars().items():
        put("dmar", name, dmar)
        put("acpi", name + "-rsdt", acpi_image(dmar, False))
        put("acpi", name + "-xsdt", acpi_image(dmar, True))
    for f in sorted(DATA.glob("*.dtb")):
        put("devicetree", f.stem, f.read_bytes())
    for f in sorted(DATA.glob("*.iort")):
        put("iort", f.stem, f.read_bytes())

    # SMMU: features byte (ATS, 2-level CDs, RIL), parent IAS 40, batch limit 2; a stage-1
    # vSTE (V, Config 0b101, S1ContextPtr 0x1000); then guest commands (IHI 0070 chapter 4).
    vste = words(0x1000 | 0xB, 0, 0, 0, 0, 0, 0, 0)
    cmds = words(
        0x11 | 5 << 48, 0,            # CMD_TLBI_NH_ASID ASID 5
        0x12 | 5 << 48, 0x4000,       # CMD_TLBI_NH_VA ASID 5, one address
        0x10, 0,                      # CMD_TLBI_NH_ALL
        0x05 | 1 << 32, 0,            # CMD_CFGI_CD StreamID 1
        0x06 | 2 << 32, 0,            # CMD_CFGI_CD_ALL StreamID 2
        0x06 | 9 << 32, 0,            # CMD_CFGI_CD_ALL StreamID 9 (not the guest's)
        0x40 | 1 << 32, 0x3F,         # CMD_ATC_INV StreamID 1, whole range
        0x46, 0,                      # CMD_SYNC
        0x30, 0,                      # CMD_TLBI_NSNH_ALL
    )
    put("smmu_guest", "stage1-and-commands", bytes([0x07, 40, 2]) + vste + cmds)
    put("smmu_guest", "bypass", bytes([0, 40, 8]) + words(0x9, 0, 0, 0, 0, 0, 0, 0))

    # VT-d: QEMU's CAP/ECAP unchanged, 39-bit guest; the first-stage entry of the guest
    # module's tests; then descriptors (6.5.2): IOTLB domain 1, PASID-IOTLB domain 2 PASID 3,
    # PASID-cache domain 1, device-TLB 00:00.1, a wait, a context-cache one (refused).
    entry = words(0x49, 0x42, 0x1234_5010, 0, 0, 0, 0, 0)
    descs = words(
        0x2 | 2 << 4 | 1 << 16, 0, 0, 0,
        0x6 | 1 << 4 | 2 << 16 | 3 << 32, 0, 0, 0,
        0x7 | 1 << 4 | 1 << 16, 0, 0, 0,
        0x3 | 1 << 16, 0, 0, 0,
        0x5 | 1 << 4, 0, 0, 0,
        0x1 | 1 << 4, 0, 0, 0,
    )
    put("vtd_guest", "first-stage-and-descriptors", bytes(16) + bytes([39]) + entry + descs)
    put("vtd_guest", "pass-through", bytes(16) + bytes([48]) + words(0x109, 0x7, 0, 0, 0, 0, 0, 0))


if __name__ == "__main__":
    main()
