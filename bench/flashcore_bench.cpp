// flashcore-bench: times flashcore::run on one shape or on the ANCHORS prefill grid, and with
// --verify checks the output against the CPU reference. GPU timing uses CUDA events over a ring
// of input sets larger than 2x L2 (cold L2); without a GPU it times the CPU reference backend.
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench_common.h"
#include "decode_bench.h"
#include "bench_verify.h"
#include "flashcore/flashcore.h"

#ifndef FLASHCORE_VERSION
#define FLASHCORE_VERSION "unknown"
#endif

namespace {
using namespace flashcore;
using namespace flashcore::bench;

#define BENCH_CUDA(expr)                                                                     \
  do {                                                                                       \
    const cudaError_t err_ = (expr);                                                         \
    if (err_ != cudaSuccess)                                                                 \
      throw std::runtime_error(std::string(#expr) + " failed: " + cudaGetErrorString(err_) + \
                               " (" + __FILE__ + ":" + std::to_string(__LINE__) + ")");      \
  } while (0)

const char kUsage[] =
    "usage: flashcore-bench [--b N] [--hq N] [--hkv N] [--sq N] [--sk N] [--d 64|128|256]\n"
    "  [--dtype bf16|fp16] [--causal] [--window L,R] [--varlen] [--grid prefill|decode]\n"
    "  [--filter SUBSTR] [--verify] [--warmup N] [--iters N] [--backend auto|cuda|reference]\n"
    "  [--family auto|hopper|portable] [--json PATH] [--cpu]\n"
    "Default shape: b=1 hq=hkv=4 sq=sk=256 d=64 bf16. --grid prefill runs the ANCHORS grid\n"
    "(B=16384/S, H=2048/D; only --dtype applies to it). --verify compares with the CPU\n"
    "reference (big shapes: slices, see the 'verified' field).\n";

struct Options {
  Case shape;
  bool grid = false, verify = false, cpu = false, decode = false;
  std::string filter, json;
  int warmup = -1, iters = -1;
  Backend backend = Backend::kAuto;
  KernelFamily family = KernelFamily::kAuto;
};

int64_t parse_int(const std::string& flag, const char* s) {
  char* end = nullptr;
  const long long v = std::strtoll(s, &end, 10);
  if (end == s || *end != '\0') throw std::invalid_argument(flag + ": not an integer: " + s);
  return v;
}

// Maps a flag's value to one of the named choices.
template <typename T>
T choose(const std::string& flag, const std::string& v,
         std::initializer_list<std::pair<const char*, T>> choices) {
  for (const auto& ch : choices)
    if (v == ch.first) return ch.second;
  throw std::invalid_argument(flag + ": unknown value " + v);
}

Options parse_args(int argc, char** argv) {
  Options o;
  Case& c = o.shape;
  c.hkv = c.sk = -1;  // default to hq and sq
  int64_t warmup = -1, iters = -1;
  const std::pair<const char*, int64_t*> ints[] = {
      {"--b", &c.b},   {"--hq", &c.hq}, {"--hkv", &c.hkv},     {"--sq", &c.sq},
      {"--sk", &c.sk}, {"--d", &c.d},   {"--warmup", &warmup}, {"--iters", &iters}};
  const std::pair<const char*, bool*> bools[] = {
      {"--causal", &c.causal}, {"--varlen", &c.varlen}, {"--verify", &o.verify}, {"--cpu", &o.cpu}};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + ": missing value");
      return argv[++i];
    };
    bool known = false;
    for (const auto& f : ints)
      if (a == f.first) *f.second = parse_int(a, value().c_str()), known = true;
    for (const auto& f : bools)
      if (a == f.first) *f.second = known = true;
    if (known) continue;
    if (a == "--filter") {
      o.filter = value();
    } else if (a == "--json") {
      o.json = value();
    } else if (a == "--dtype") {
      c.dtype = choose<DType>(a, value(), {{"bf16", DType::kBFloat16}, {"fp16", DType::kFloat16}});
    } else if (a == "--grid") {
      const std::string g = value();
      o.decode = g == "decode";
      o.grid = choose<bool>(a, g, {{"prefill", true}, {"decode", true}});
    } else if (a == "--backend") {
      o.backend = choose<Backend>(
          a, value(),
          {{"auto", Backend::kAuto}, {"cuda", Backend::kCuda}, {"reference", Backend::kReference}});
    } else if (a == "--family") {
      o.family = choose<KernelFamily>(a, value(),
                                      {{"auto", KernelFamily::kAuto},
                                       {"hopper", KernelFamily::kHopper},
                                       {"portable", KernelFamily::kPortable}});
    } else if (a == "--window") {
      const std::string v = value();
      const size_t comma = v.find(',');
      if (comma == std::string::npos) throw std::invalid_argument("--window: expected L,R");
      c.wl = parse_int(a, v.substr(0, comma).c_str());
      c.wr = parse_int(a, v.substr(comma + 1).c_str());
    } else if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument " + a);
    }
  }
  o.warmup = static_cast<int>(warmup);
  o.iters = static_cast<int>(iters);
  if (c.hkv == -1) c.hkv = c.hq;
  if (c.sk == -1) c.sk = c.sq;
  if (c.b < 1 || c.hq < 1 || c.hkv < 1 || c.sq < 0 || c.sk < 0)
    throw std::invalid_argument("sizes: need b, hq, hkv >= 1 and sq, sk >= 0");
  if (o.warmup < -1 || o.iters == 0 || o.iters < -1)
    throw std::invalid_argument("--warmup must be >= 0 and --iters >= 1");
  if (o.cpu && o.backend == Backend::kCuda)
    throw std::invalid_argument("--cpu contradicts --backend cuda");
  c.halved_flops = c.causal && c.sq == c.sk && c.wl < 0 && c.wr < 0 && !c.varlen;
  c.name = default_name(c);
  return o;
}

struct RowResult {
  Case c;
  Stats st;
  double tflops = 0;
  std::string kernel, verify = "skipped", error;
  VerifyResult vr;
  int64_t ring_sets = 1;
};

RowResult fail(RowResult& r, const std::string& message) {
  r.error = message;
  return r;
}

void finish_verify(RowResult& r, const HostData& h) {
  r.vr = verify(r.c, h);
  r.verify = !r.vr.error.empty() ? "error" : r.vr.pass ? "pass" : "FAIL";
  if (!r.vr.error.empty()) r.error = "reference: " + r.vr.error;
}

// Device memory freed on scope exit.
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) {
    BENCH_CUDA(cudaMalloc(&ptr, std::max<size_t>(bytes, 256)));
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

RowResult run_gpu_row(const Case& c, const Options& o, const cudaDeviceProp& prop,
                      cudaStream_t stream) {
  RowResult r;
  r.c = c;
  HostData h;
  const Sizes sz = make_host_data(c, h);
  const size_t qb = sz.q_elems * 2, kb = sz.k_elems * 2, set_bytes = 2 * qb + 2 * kb;
  size_t free_b = 0, total_b = 0;
  BENCH_CUDA(cudaMemGetInfo(&free_b, &total_b));
  // Cold L2: rotate through sets whose total exceeds 2x L2; at least 2, within 80% of free memory.
  const size_t want =
      std::max<size_t>(2, (2 * static_cast<size_t>(prop.l2CacheSize)) / set_bytes + 1);
  const size_t fit =
      static_cast<size_t>(0.8 * static_cast<double>(free_b)) / std::max<size_t>(set_bytes, 1);
  const size_t nsets = std::min<size_t>({want, fit, 1024});
  if (nsets == 0) throw std::runtime_error("not enough device memory for one input set");
  r.ring_sets = static_cast<int64_t>(nsets);
  std::vector<std::unique_ptr<DeviceBuffer>> bufs;
  std::vector<AttentionParams> params;
  std::unique_ptr<DeviceBuffer> cu_q, cu_k;
  if (c.varlen) {
    cu_q = std::make_unique<DeviceBuffer>(h.cu_q.size() * 4);
    cu_k = std::make_unique<DeviceBuffer>(h.cu_k.size() * 4);
    BENCH_CUDA(cudaMemcpy(cu_q->ptr, h.cu_q.data(), h.cu_q.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(cu_k->ptr, h.cu_k.data(), h.cu_k.size() * 4, cudaMemcpyHostToDevice));
  }
  for (size_t s = 0; s < nsets; ++s) {  // every set holds the same data at other addresses
    void* t[4];
    for (int i = 0; i < 4; ++i) {
      bufs.push_back(std::make_unique<DeviceBuffer>(i == 0 || i == 3 ? qb : kb));
      t[i] = bufs.back()->ptr;
    }
    BENCH_CUDA(cudaMemcpy(t[0], h.q.data(), qb, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(t[1], h.k.data(), kb, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(t[2], h.v.data(), kb, cudaMemcpyHostToDevice));
    params.push_back(make_params(
        c, h, t[0], t[1], t[2], t[3], c.varlen ? static_cast<const int32_t*>(cu_q->ptr) : nullptr,
        c.varlen ? static_cast<const int32_t*>(cu_k->ptr) : nullptr, o.backend));
    params.back().family = o.family;
  }
  const Plan plan = query(params[0]);
  r.kernel = plan.kernel;
  if (!plan.status.ok()) return fail(r, plan.status.message);
  // One zero-filled workspace serves every call of the row, as flashcore.h allows.
  DeviceBuffer ws(static_cast<size_t>(plan.workspace_bytes));
  BENCH_CUDA(cudaMemset(ws.ptr, 0, std::max<size_t>(plan.workspace_bytes, 256)));
  if (o.verify) {
    BENCH_CUDA(cudaMemsetAsync(params[0].o, 0xFF, qb, stream));  // NaN poison
    const Status st = run(params[0], ws.ptr, stream);
    if (!st.ok()) return fail(r, st.message);
    BENCH_CUDA(cudaStreamSynchronize(stream));
    BENCH_CUDA(cudaMemcpy(h.o.data(), params[0].o, qb, cudaMemcpyDeviceToHost));
    finish_verify(r, h);
  }
  for (int i = 0; i < o.warmup; ++i) {
    const Status st = run(params[i % nsets], ws.ptr, stream);
    if (!st.ok()) return fail(r, st.message);
  }
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(o.iters));
  for (auto& e : ev) BENCH_CUDA(cudaEventCreate(&e));
  Status st;
  for (int i = 0; i < o.iters && st.ok(); ++i) {
    BENCH_CUDA(cudaEventRecord(ev[2 * i], stream));
    st = run(params[(o.warmup + i) % nsets], ws.ptr, stream);
    BENCH_CUDA(cudaEventRecord(ev[2 * i + 1], stream));
  }
  BENCH_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> us;
  for (int i = 0; i < o.iters && st.ok(); ++i) {
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
    us.push_back(1e3 * ms);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  if (!st.ok()) return fail(r, st.message);
  r.st = summarize(us);
  r.tflops = flops(c, h.cu_q, h.cu_k) / (r.st.median * 1e-6) / 1e12;
  return r;
}

RowResult run_cpu_row(const Case& c, const Options& o) {
  RowResult r;
  r.c = c;
  HostData h;
  make_host_data(c, h);
  const Backend be = o.backend == Backend::kCuda ? Backend::kAuto : o.backend;
  const AttentionParams p = make_params(c, h, h.q.data(), h.k.data(), h.v.data(), h.o.data(),
                                        h.cu_q.data(), h.cu_k.data(), be);
  const Plan plan = query(p);
  r.kernel = plan.kernel;
  if (!plan.status.ok()) return fail(r, plan.status.message);
  if (o.verify) {  // h.o is still poisoned
    const Status st = run(p);
    if (!st.ok()) return fail(r, st.message);
    finish_verify(r, h);
  }
  std::vector<double> us;
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const Status st = run(p);
    const auto t1 = std::chrono::steady_clock::now();
    if (!st.ok()) return fail(r, st.message);
    if (i >= o.warmup) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  r.st = summarize(us);
  r.tflops = flops(c, h.cu_q, h.cu_k) / (r.st.median * 1e-6) / 1e12;
  return r;
}

void print_row(const RowResult& r, int name_w) {
  if (!r.error.empty()) {
    std::printf("%-*s %-38s ERROR: %s\n", name_w, r.c.name.c_str(), shape_str(r.c).c_str(),
                r.error.c_str());
  } else {
    std::printf("%-*s %-38s %10.1f %10.1f %10.1f %9.3g  %-34s %s\n", name_w, r.c.name.c_str(),
                shape_str(r.c).c_str(), r.st.median, r.st.p10, r.st.p90, r.tflops, r.kernel.c_str(),
                r.verify.c_str());
    if (r.verify != "skipped")
      std::printf("    verify: max_err %.3g, same-precision ref err %.3g, NaN %lld, checked %s\n",
                  r.vr.max_err, r.vr.ref_err, (long long)r.vr.nan_count, r.vr.scope.c_str());
  }
  std::fflush(stdout);
}

void write_json(const std::string& path, const std::vector<RowResult>& rows,
                const std::string& device, int sms, const std::string& mode) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw std::runtime_error("cannot open " + path + " for writing");
  std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"sm_count\": %d,\n  \"mode\": \"%s\",\n",
               json_escape(device).c_str(), sms, mode.c_str());
  std::fprintf(f, "  \"git_revision\": \"%s\",\n  \"date\": \"%s\",\n",
               json_escape(git_revision()).c_str(), utc_now_iso8601().c_str());
  std::fprintf(f, "  \"flashcore_version\": \"%s\",\n  \"rows\": [", FLASHCORE_VERSION);
  for (size_t i = 0; i < rows.size(); ++i) {
    const RowResult& r = rows[i];
    const Case& c = r.c;
    std::fprintf(f, "%s\n    {\"name\": \"%s\", \"b\": %lld, \"hq\": %lld, \"hkv\": %lld, ",
                 i ? "," : "", json_escape(c.name).c_str(), (long long)c.b, (long long)c.hq,
                 (long long)c.hkv);
    std::fprintf(f, "\"sq\": %lld, \"sk\": %lld, \"d\": %lld, \"dtype\": \"%s\", ", (long long)c.sq,
                 (long long)c.sk, (long long)c.d, to_string(c.dtype));
    std::fprintf(f, "\"causal\": %s, \"window_left\": %lld, \"window_right\": %lld, ",
                 c.causal ? "true" : "false", (long long)c.wl, (long long)c.wr);
    std::fprintf(f, "\"varlen\": %s, \"kernel\": \"%s\", \"ring_sets\": %lld, ",
                 c.varlen ? "true" : "false", json_escape(r.kernel).c_str(),
                 (long long)r.ring_sets);
    std::fprintf(f, "\"time_us\": {\"median\": %.3f, \"p10\": %.3f, \"p90\": %.3f}, ", r.st.median,
                 r.st.p10, r.st.p90);
    std::fprintf(f, "\"tflops\": %.3f, \"verify\": \"%s\", \"verified\": \"%s\", ", r.tflops,
                 r.verify.c_str(), json_escape(r.vr.scope).c_str());
    std::fprintf(f, "\"max_err\": %.6g, \"ref_err\": %.6g, \"error\": \"%s\"}", r.vr.max_err,
                 r.vr.ref_err, json_escape(r.error).c_str());
  }
  std::fprintf(f, "\n  ]\n}\n");
  if (std::fclose(f) != 0) throw std::runtime_error("error writing " + path);
}

int bench_main(int argc, char** argv) {
  Options o = parse_args(argc, argv);
  int ndev = 0;
  const cudaError_t e = cudaGetDeviceCount(&ndev);
  const bool gpu = e == cudaSuccess && ndev > 0;
  if (!gpu) {
    cudaGetLastError();  // clear the sticky "no driver" error
    if (o.backend == Backend::kCuda) throw std::runtime_error("--backend cuda: no GPU found");
    std::printf("no GPU found: running the CPU reference backend on a small shape\n");
    std::printf("(cudaGetDeviceCount: %s, %d devices)\n",
                e == cudaSuccess ? "ok" : cudaGetErrorString(e), ndev);
  }
  const bool on_cpu = !gpu || o.cpu || o.backend == Backend::kReference;
  if (o.decode) {  // KV-cache rows, CUDA-graph timed (decode_bench.h)
    if (on_cpu) {
      std::printf("--grid decode times the CUDA kernels under graph replay: it needs a GPU\n");
      return 0;
    }
    int dev = 0;
    cudaDeviceProp prop{};
    BENCH_CUDA(cudaGetDevice(&dev));
    BENCH_CUDA(cudaGetDeviceProperties(&prop, dev));
    cudaStream_t stream = nullptr;
    BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::printf("flashcore-bench %s (git %s) on %s: decode, B x 32/8 heads, D128, bf16\n",
                FLASHCORE_VERSION, git_revision().c_str(), prop.name);
    const int rc = run_decode_grid(stream, prop, o.filter);
    BENCH_CUDA(cudaStreamDestroy(stream));
    return rc;
  }
  if (o.warmup < 0) o.warmup = on_cpu ? 1 : 10;
  if (o.iters < 0) o.iters = on_cpu ? 5 : 50;

  // Without a GPU, the grid and shapes over 2^26 (query, key) pairs · heads become the default
  // small shape (the CPU reference would take hours); --filter does not apply to it.
  std::vector<Case> cases =
      o.grid && !on_cpu ? prefill_grid(o.shape.dtype) : std::vector<Case>{o.shape};
  if (on_cpu &&
      (o.grid || (!gpu && o.shape.sq * o.shape.sk * o.shape.b * o.shape.hq > (1 << 26)))) {
    std::printf("(too big for the CPU: running b=1 hq=hkv=4 sq=sk=256 d=64 instead)\n");
    cases = {Case{}};
    cases[0].dtype = o.shape.dtype;
    cases[0].name = default_name(cases[0]);
    o.filter.clear();
  }
  cases.erase(
      std::remove_if(cases.begin(), cases.end(),
                     [&](const Case& c) { return c.name.find(o.filter) == std::string::npos; }),
      cases.end());

  std::string device = "CPU (reference backend)";
  int sms = 0;
  cudaDeviceProp prop{};
  cudaStream_t stream = nullptr;
  if (!on_cpu) {
    int dev = 0;
    BENCH_CUDA(cudaGetDevice(&dev));
    BENCH_CUDA(cudaGetDeviceProperties(&prop, dev));
    device = prop.name;
    sms = prop.multiProcessorCount;
    BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
  std::printf("flashcore-bench %s (git %s) on %s%s; warmup %d, iters %d%s\n", FLASHCORE_VERSION,
              git_revision().c_str(), device.c_str(),
              on_cpu ? ""
                     : (", " + std::to_string(sms) + " SMs, L2 " +
                        std::to_string(prop.l2CacheSize >> 20) + " MiB")
                           .c_str(),
              o.warmup, o.iters, on_cpu ? "" : ", cold L2 (rotating input sets)");
  int name_w = 4;
  for (const Case& c : cases) name_w = std::max(name_w, static_cast<int>(c.name.size()));
  std::printf("%-*s %-38s %10s %10s %10s %9s  %-34s %s\n", name_w, "name", "shape", "median us",
              "p10 us", "p90 us", "TFLOP/s", "kernel", "verify");

  std::vector<RowResult> rows;
  bool failed = cases.empty();
  if (cases.empty()) std::printf("no row matches --filter '%s'\n", o.filter.c_str());
  for (const Case& c : cases) {
    rows.push_back(on_cpu ? run_cpu_row(c, o) : run_gpu_row(c, o, prop, stream));
    print_row(rows.back(), name_w);
    failed |= !rows.back().error.empty() || rows.back().verify == "FAIL";
  }
  if (stream) BENCH_CUDA(cudaStreamDestroy(stream));
  if (!o.json.empty()) {
    write_json(o.json, rows, device, sms, on_cpu ? "cpu-reference" : "cuda");
    std::printf("wrote %s\n", o.json.c_str());
  }
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return bench_main(argc, argv);
  } catch (const std::invalid_argument& ex) {
    std::fprintf(stderr, "flashcore-bench: %s\n%s", ex.what(), kUsage);
    return 2;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "flashcore-bench: %s\n", ex.what());
    return 1;
  }
}
