// Runs one attention call through the installed library (CPU reference on host memory) and
// checks a closed form: with every V row equal to 2.0, every output element is 2.0.
#include <flashcore/flashcore.h>

#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
  const int64_t s = 5, h = 2, d = 64;
  std::vector<uint16_t> q(s * h * d), k(s * h * d), v(s * h * d, 0x4000), o(s * h * d, 0x7FC0);
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = (i % 3) ? 0x3F80 : 0xBF00;  // bf16 1.0 and -0.5
    k[i] = (i % 5) ? 0x3E80 : 0xBF80;  // bf16 0.25 and -1.0
  }
  flashcore::AttentionParams p;
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.o = o.data();
  p.q_strides = p.k_strides = p.v_strides = p.o_strides = {s * h * d, h * d, d};
  p.dtype = flashcore::DType::kBFloat16;
  p.batch = 1, p.seqlen_q = s, p.seqlen_k = s, p.num_heads_q = h, p.num_heads_kv = h;
  p.head_dim = d;
  p.causal = true;
  const flashcore::Plan plan = flashcore::query(p);
  const flashcore::Status st = flashcore::run(p);
  if (!st.ok()) {
    std::printf("run failed: %s\n", st.message.c_str());
    return 1;
  }
  for (uint16_t x : o)
    if (x != 0x4000) {
      std::printf("wrong output element 0x%04x\n", x);
      return 1;
    }
  std::printf("ok: kernel %s, backend %s\n", plan.kernel.c_str(),
              flashcore::to_string(plan.backend));
  return 0;
}
