//! AES in counter mode as SRTP uses it (RFC 3711 §4.1.1): the 128-bit counter block is the IV
//! plus the block number in its low 16 bits. Keystream blocks are made eight at a time on the
//! stack (AES-NI pipelines them) and XORed into the data in place.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::BlockEncrypt;
use aes::Aes128;

const PAR: usize = 8;

/// XORs the AES-CM keystream starting at `iv` into `data`. `data` may be up to 2^16 blocks
/// (1 MiB) long, far beyond any datagram.
#[inline]
pub fn keystream_xor(cipher: &Aes128, iv: &[u8; 16], data: &mut [u8]) {
    let base = u128::from_be_bytes(*iv);
    let mut blocks = [GenericArray::from([0u8; 16]); PAR];
    let mut counter: u128 = 0;
    for chunk in data.chunks_mut(16 * PAR) {
        let n = chunk.len().div_ceil(16);
        for b in blocks.iter_mut().take(n) {
            // The block number is added to the low 16 bits of the IV (whose low bits are zero
            // for SRTP IVs, so this is also the RFC's plain addition modulo 2^128).
            *b = GenericArray::from(base.wrapping_add(counter).to_be_bytes());
            counter += 1;
        }
        cipher.encrypt_blocks(&mut blocks[..n]);
        for (i, byte) in chunk.iter_mut().enumerate() {
            *byte ^= blocks[i / 16][i % 16];
        }
    }
}
