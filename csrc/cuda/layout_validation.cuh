// Content checks of a CSR index on the GPU (offsets run 0..nnz without decreasing, indices lie in
// [0, n_cols)), done once per distinct layout storage.
//
// Why once: the checks run as ATen ops on the device, and their verdict has to reach the host, a device-to-
// host copy that waits for the stream. Doing that on every call would stall every training step. A layer
// passes the same layout tensors on every step, so a checked index is remembered by (storage, data pointer,
// version counter, numel, n_cols):
//   - an in-place write to the tensor (or any view of it) bumps its version counter: checked again;
//   - each entry holds a weak reference to the storage, so while the entry exists the storage object's
//     address cannot be reused by another storage: a new tensor at a recycled address is never mistaken for
//     a checked one;
//   - writes the version counter cannot see (through .data, DLPack, raw pointers) are not caught.
// Inference tensors have no version counter: they are checked on every call.
//
// Why check at all: the kernels read dense[col_indices[i]] and out-of-range offsets would read past the index
// arrays; a corrupt layout must raise a ValueError, as on the CPU (csrc/checks.h), not fault the device.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/core/StorageImpl.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace sparsekern {
namespace gpu {

// One verdict copied to the host: the checks below in a single sync. Raises ValueError naming the tensor.
inline void check_compressed_on_device(const at::Tensor& offsets, const at::Tensor& indices, int64_t n_cols,
                                       const char* offsets_name, const char* indices_name) {
  const int64_t n_rows = offsets.numel() - 1;
  const int64_t nnz = indices.numel();
  const at::TensorOptions long_options = offsets.options().dtype(at::kLong);
  const at::Tensor zero = at::zeros({}, long_options);
  const at::Tensor first = offsets.select(0, 0).to(at::kLong);
  const at::Tensor last = offsets.select(0, n_rows).to(at::kLong);
  at::Tensor any_decrease = zero, first_decrease = zero, lo = zero, hi = zero;
  if (n_rows > 0) {
    const at::Tensor decrease = offsets.narrow(0, 1, n_rows).lt(offsets.narrow(0, 0, n_rows));
    any_decrease = decrease.any().to(at::kLong);
    first_decrease = decrease.to(at::kInt).argmax().to(at::kLong);  // the first maximum: the first decrease
  }
  if (nnz > 0) {
    lo = indices.min().to(at::kLong);
    hi = indices.max().to(at::kLong);
  }
  const at::Tensor verdict = at::stack({first, last, any_decrease, first_decrease, lo, hi}).cpu();  // the sync
  const int64_t* v = verdict.const_data_ptr<int64_t>();
  TORCH_CHECK_VALUE(v[0] == 0 && v[1] == nnz, offsets_name, ": expected to run from 0 to nnz=", nnz, ", got ",
                    v[0], "..", v[1]);
  TORCH_CHECK_VALUE(v[2] == 0, offsets_name, ": decreases at row ", v[3]);
  TORCH_CHECK_VALUE(nnz == 0 || (v[4] >= 0 && v[5] < n_cols), indices_name, ": expected indices in [0, ", n_cols,
                    "), got range [", v[4], ", ", v[5], "]");
}

// A checked (offsets, indices) pair, as it was when it was checked.
struct CheckedIndex {
  c10::weak_intrusive_ptr<c10::StorageImpl> offsets_storage, indices_storage;
  const void* offsets_data;
  const void* indices_data;
  int64_t offsets_version, indices_version, offsets_numel, indices_numel, n_cols;

  static int64_t version(const at::Tensor& t) {
    return static_cast<int64_t>(t.unsafeGetTensorImpl()->version_counter().current_version());
  }

  static CheckedIndex of(const at::Tensor& offsets, const at::Tensor& indices, int64_t n_cols) {
    return {offsets.storage().getWeakStorageImpl(),
            indices.storage().getWeakStorageImpl(),
            offsets.const_data_ptr(),
            indices.const_data_ptr(),
            version(offsets),
            version(indices),
            offsets.numel(),
            indices.numel(),
            n_cols};
  }

  // The caller holds both tensors, so their storages are alive: an entry whose weak reference points at the
  // same storage object refers to that very storage (its address cannot have been reused while referenced).
  bool matches(const at::Tensor& offsets, const at::Tensor& indices, int64_t cols) const {
    return offsets_storage._unsafe_get_target() == offsets.storage().unsafeGetStorageImpl() &&
           indices_storage._unsafe_get_target() == indices.storage().unsafeGetStorageImpl() &&
           offsets_data == offsets.const_data_ptr() && indices_data == indices.const_data_ptr() &&
           offsets_numel == offsets.numel() && indices_numel == indices.numel() && n_cols == cols &&
           offsets_version == version(offsets) && indices_version == version(indices);
  }

  bool expired() const { return offsets_storage.expired() || indices_storage.expired(); }
};

struct CheckedIndexCache {
  // Two entries per CSR layer (W's row half, Wᵀ's in the backward): room for ~2000 layers before a cycle
  // of calls would miss every time. Beyond it, expired entries go first. A scan is a few µs at this size.
  static constexpr size_t kMaxEntries = 4096;
  std::mutex mutex;
  std::vector<CheckedIndex> entries;
};

// One cache for the whole extension (an inline function's static is shared by every translation unit).
// Never destroyed, so no kernel call during interpreter shutdown meets a destroyed mutex.
inline CheckedIndexCache& checked_index_cache() {
  static CheckedIndexCache* cache = new CheckedIndexCache();
  return *cache;
}

// Checks (offsets, indices) unless this exact storage, at this version, was checked before. Call it with
// the tensors' device current (CUDAGuard) and after their dtype/shape/contiguity checks.
inline void check_compressed_cached(const at::Tensor& offsets, const at::Tensor& indices, int64_t n_cols,
                                    const char* offsets_name, const char* indices_name) {
  const bool cacheable = offsets.has_storage() && indices.has_storage() && !offsets.is_inference() &&
                         !indices.is_inference();
  CheckedIndexCache& cache = checked_index_cache();
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache.mutex);
    for (const CheckedIndex& entry : cache.entries) {
      if (entry.matches(offsets, indices, n_cols)) return;
    }
  }
  // A sync cannot be captured into a CUDA graph: the first call with a layout has to run before capture
  // (the usual warm-up iteration does), after which captured calls find it here.
  TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None, offsets_name,
              ", ", indices_name, ": this layout has not been validated yet, and validating it needs a host sync, "
              "which CUDA graph capture does not allow; call the op once with this layout before capturing");
  check_compressed_on_device(offsets, indices, n_cols, offsets_name, indices_name);  // outside the lock: it syncs
  if (!cacheable) return;
  std::lock_guard<std::mutex> lock(cache.mutex);
  if (cache.entries.size() >= CheckedIndexCache::kMaxEntries) {
    std::vector<CheckedIndex> alive;
    for (CheckedIndex& entry : cache.entries) {
      if (!entry.expired()) alive.push_back(std::move(entry));
    }
    // Still full: keep the newer half (forgotten layouts are only checked again, at the cost of a sync).
    if (alive.size() >= CheckedIndexCache::kMaxEntries) {
      alive.erase(alive.begin(), alive.begin() + static_cast<std::ptrdiff_t>(alive.size() / 2));
    }
    cache.entries = std::move(alive);
  }
  cache.entries.push_back(CheckedIndex::of(offsets, indices, n_cols));
}

}  // namespace gpu
}  // namespace sparsekern
