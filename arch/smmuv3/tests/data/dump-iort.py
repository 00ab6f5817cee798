#!/usr/bin/env python3
"""Dumps the IORT that QEMU builds for an aarch64 `virt` machine, without firmware.

QEMU builds its ACPI tables at machine start and hands them to firmware through fw_cfg
(file `etc/acpi/tables`). Started with `-qtest stdio`, no guest code runs: this script drives
the fw_cfg DMA interface through qtest commands (descriptor in guest RAM, DMA address register
big-endian at fw_cfg + 16), reads the tables back from RAM, and cuts out the IORT. The checksum
byte is left 0 by QEMU (firmware computes it from `etc/table-loader`); it is fixed here the same
way, so the file is the table a guest would see.

usage: dump-iort.py MACHINE OUT [extra QEMU args], e.g.
       dump-iort.py virt,iommu=smmuv3 qemu10-virt-smmuv3-edu.iort -device edu
"""
import base64
import struct
import subprocess
import sys

FW_CFG = 0x0902_0000  # virt's fw_cfg (devicetree node fw-cfg@9020000)
RAM = 0x4000_0000
FILE_DIR = 0x19
CTL_SELECT, CTL_READ = 0x08, 0x02


def main():
    machine, out, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    qemu = subprocess.Popen(
        ["qemu-system-aarch64", "-machine", machine, "-cpu", "max", "-m", "256M",
         "-nodefaults", "-display", "none", "-qtest", "stdio"] + extra,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        bufsize=1)

    def qtest(command):
        qemu.stdin.write(command + "\n")
        qemu.stdin.flush()
        while True:
            line = qemu.stdout.readline()
            if not line:
                sys.exit("QEMU exited")
            if line.startswith(("OK", "FAIL", "ERR")):
                return line.split()

    def be32_as_le(v):
        return struct.unpack("<I", struct.pack(">I", v))[0]

    def dma_read(selector, length, dest):
        desc = struct.pack(">IIQ", selector << 16 | CTL_SELECT | CTL_READ, length, dest)
        qtest(f"write {RAM:#x} {len(desc)} 0x{desc.hex()}")
        # Writing the low half of the big-endian address register starts the transfer.
        qtest(f"writel {FW_CFG + 16:#x} {be32_as_le(RAM >> 32):#x}")
        qtest(f"writel {FW_CFG + 20:#x} {be32_as_le(RAM & 0xffffffff):#x}")
        return base64.b64decode(qtest(f"b64read {dest:#x} {length}")[1])

    count = struct.unpack(">I", dma_read(FILE_DIR, 4, RAM + 0x1000))[0]
    entries = dma_read(FILE_DIR, 4 + 64 * count, RAM + 0x1000)[4:]
    files = {}
    for i in range(count):
        e = entries[64 * i:64 * (i + 1)]
        size, selector = struct.unpack(">IH", e[:6])
        files[e[8:].split(b"\0")[0].decode()] = (size, selector)
    size, selector = files["etc/acpi/tables"]
    tables = dma_read(selector, size, RAM + 0x10_0000)
    at = tables.find(b"IORT")
    if at < 0:
        sys.exit("no IORT in the ACPI tables")
    length = struct.unpack("<I", tables[at + 4:at + 8])[0]
    iort = bytearray(tables[at:at + length])
    iort[9] = 0
    iort[9] = -sum(iort) & 0xff
    with open(out, "wb") as f:
        f.write(iort)
    qemu.kill()


if __name__ == "__main__":
    main()
