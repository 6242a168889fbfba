// Per-thread scratch buffers, reused across calls so large ones do not pay fresh page faults every step.
#pragma once

#include <cstdint>
#include <vector>

namespace sparsekern {

// At least `numel` elements owned by the calling thread; `Tag` keeps unrelated users apart (the thread that
// packs an operand also computes with a tile of its own). Grows to the largest request seen. Aligned to a
// cache line: vector loads from a misaligned buffer straddle two lines (the SpMM ran 1.7x slower).
template <typename T, typename Tag>
inline T* scratch_buffer(int64_t numel) {
  constexpr int64_t kAlign = 64;
  thread_local std::vector<T> buffer;
  const int64_t padded = numel + kAlign / static_cast<int64_t>(sizeof(T));
  if (static_cast<int64_t>(buffer.size()) < padded) buffer.resize(padded);
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return reinterpret_cast<T*>((address + kAlign - 1) / kAlign * kAlign);
}

}  // namespace sparsekern
