//! QEMU `edu` device DMA driver: placeholder.
