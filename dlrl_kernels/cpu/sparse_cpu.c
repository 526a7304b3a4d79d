/* CPU kernels for the sparse masked residual and its two chain gradients.
 *
 * Plain C99, no torch headers: dlrl_kernels/cpu/__init__.py compiles this file with the
 * system C compiler on first use (cached by source, flags and CPU), loads it with ctypes and
 * calls it on the data pointers of contiguous tensors. ctypes releases the GIL during a call,
 * so the Python side may run two calls on two threads (R and Q write disjoint outputs).
 *
 * Why: torch's CPU sparse ops (sampled_addmm, CSR @ dense, index_add_) take 2-10x the time of
 * one fused pass over the entries at the sizes DLRL trains on (80 000 entries, d = 20).
 *
 *   residual:  e[k] = <U[rows[k]], Vt[cols[k]]> - values[k]                 k in [k0, k1)
 *   grad_rows: R[i] = scale * sum_{k: rows[k] = i} e[k] Vt[cols[k]]          (R zeroed here)
 *   grad_cols: Q[j] = scale * sum_{k: cols[k] = j} e[k] U[rows[k]]           (Q zeroed here)
 *   loss_grad: e, R, Q (scale 1) and sum e^2 in one pass (the training loss's forward)
 *
 * scale is read through a pointer: the training loss's backward passes the incoming gradient
 * tensor's storage, so no scalar ever has to be read back into Python.
 *
 * The rank d is a run-time argument, but the loops over d are short (d = 10..64 typically):
 * with d unknown the compiler leaves a scalar remainder and a horizontal sum per entry that
 * cost 2-3x. So the loader compiles this file once per rank it meets, with -DDLRL_D=<d>: the
 * loops then have a compile-time trip count (fully unrolled and vectorised); -DDLRL_D=0 is the
 * generic build. Each build takes ~0.3 s and is cached. Dot products accumulate in the input
 * precision in an order that differs from torch's (the tests compare against a float64
 * evaluation). Indices are int64 and are range-checked by the caller.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef DLRL_D
#define DLRL_D 0
#endif
/* the d the loops run with: the constant when this build is specialised, else the argument */
#define DIM(d) (DLRL_D > 0 ? (int64_t)DLRL_D : (d))
/* a row accumulator: a fixed-size array in a specialised build, else a C99 VLA of length d */
#if DLRL_D > 0
#define ACC_DECL(T) T acc[DLRL_D]
#define ACC_DECL2(T, name) T name[DLRL_D]
#else
#define ACC_DECL(T) T acc[d > 0 ? d : 1]
#define ACC_DECL2(T, name) T name[d > 0 ? d : 1]
#endif

#define DLRL_KERNELS(T, SUF)                                                                    \
    void dlrl_residual_##SUF(int64_t k0, int64_t k1, int64_t d_, const int64_t *rows,          \
                             const int64_t *cols, const T *U, const T *Vt, const T *values,      \
                             T *e) {                                                             \
        const int64_t d = DIM(d_);                                                              \
        for (int64_t k = k0; k < k1; ++k) {                                                     \
            const T *u = U + rows[k] * d;                                                       \
            const T *v = Vt + cols[k] * d;                                                      \
            T s = 0;                                                                            \
            for (int64_t t = 0; t < d; ++t) s += u[t] * v[t];                                   \
            e[k] = s - values[k];                                                               \
        }                                                                                       \
    }                                                                                           \
    static void axpy_##SUF(int64_t nnz, int64_t d_, const int64_t *dst, const int64_t *src_idx, \
                           const T *src, const T *e, const T *scale_p, T *out) {                 \
        const int64_t d = DIM(d_);                                                              \
        const T scale = *scale_p;                                                               \
        for (int64_t k = 0; k < nnz; ++k) {                                                     \
            T *o = out + dst[k] * d;                                                            \
            const T *x = src + src_idx[k] * d;                                                  \
            const T w = scale * e[k];                                                           \
            for (int64_t t = 0; t < d; ++t) o[t] += w * x[t];                                   \
        }                                                                                       \
    }                                                                                           \
    /* R accumulates each run of equal rows[k] in a local array and adds it to R[i] once: with \
     * rows sorted (the training path's CSR order) every R row is written once; any order is   \
     * still correct (a row met in several runs gets several additions) */                    \
    void dlrl_grad_rows_##SUF(int64_t nnz, int64_t m, int64_t d_, const int64_t *rows,         \
                              const int64_t *cols, const T *Vt, const T *e, const T *scale_p,    \
                              T *R) {                                                            \
        const int64_t d = DIM(d_);                                                              \
        const T scale = *scale_p;                                                               \
        memset(R, 0, (size_t)(m * d) * sizeof(T));                                              \
        if (DLRL_D == 0) {                                                                      \
            axpy_##SUF(nnz, d, rows, cols, Vt, e, scale_p, R);                                  \
            return;                                                                             \
        }                                                                                       \
        T acc[DLRL_D > 0 ? DLRL_D : 1];                                                         \
        int64_t k = 0;                                                                          \
        while (k < nnz) {                                                                       \
            const int64_t i = rows[k];                                                          \
            for (int64_t t = 0; t < d; ++t) acc[t] = 0;                                         \
            for (; k < nnz && rows[k] == i; ++k) {                                              \
                const T *v = Vt + cols[k] * d;                                                  \
                const T w = e[k];                                                               \
                for (int64_t t = 0; t < d; ++t) acc[t] += w * v[t];                             \
            }                                                                                   \
            T *r = R + i * d;                                                                   \
            for (int64_t t = 0; t < d; ++t) r[t] += scale * acc[t];                             \
        }                                                                                       \
    }                                                                                           \
    void dlrl_grad_cols_##SUF(int64_t nnz, int64_t n, int64_t d, const int64_t *rows,          \
                              const int64_t *cols, const T *U, const T *e, const T *scale,       \
                              T *Q) {                                                            \
        memset(Q, 0, (size_t)(n * d) * sizeof(T));                                              \
        axpy_##SUF(nnz, d, cols, rows, U, e, scale, Q);                                         \
    }                                                                                           \
    /* The training loss and both chain gradients in ONE pass over entries [k0, k1): while    \
     * U[i] and Vt[j] are loaded for the residual, e_k Vt[j] is added to the row's accumulator \
     * and e_k U[i] to Q[j]. Three passes (SDDMM, then R, then Q) read every factor row three   \
     * times; this reads them once. R (m x d) and Q (n x d) are zeroed here (two threads get   \
     * separate R, Q and the caller adds them); any entry order is correct, sorted rows make   \
     * each R row a single write. *J = sum of e_k^2 in double. */                               \
    void dlrl_loss_grad_##SUF(int64_t k0, int64_t k1, int64_t m, int64_t n, int64_t d_,        \
                              const int64_t *restrict rows, const int64_t *restrict cols,        \
                              const T *restrict U, const T *restrict Vt,                         \
                              const T *restrict values, T *restrict e, T *restrict R,            \
                              T *restrict Q, double *restrict J) {                               \
        const int64_t d = DIM(d_);                                                              \
        memset(R, 0, (size_t)(m * d) * sizeof(T));                                              \
        memset(Q, 0, (size_t)(n * d) * sizeof(T));                                              \
        ACC_DECL(T);                                                                            \
        ACC_DECL2(T, u);                                                                        \
        double jj = 0.0;                                                                        \
        int64_t k = k0;                                                                         \
        while (k < k1) {                                                                        \
            const int64_t i = rows[k];                                                          \
            /* the row in a local array: the compiler then knows the Q writes cannot change it */ \
            for (int64_t t = 0; t < d; ++t) { u[t] = U[i * d + t]; acc[t] = 0; }                \
            for (; k < k1 && rows[k] == i; ++k) {                                               \
                const T *restrict v = Vt + cols[k] * d;                                         \
                T *restrict q = Q + cols[k] * d;                                                \
                T s = 0;                                                                        \
                for (int64_t t = 0; t < d; ++t) s += u[t] * v[t];                               \
                const T ek = s - values[k];                                                     \
                e[k] = ek;                                                                      \
                jj += (double)ek * (double)ek;                                                  \
                for (int64_t t = 0; t < d; ++t) {                                               \
                    acc[t] += ek * v[t];                                                        \
                    q[t] += ek * u[t];                                                          \
                }                                                                               \
            }                                                                                   \
            T *r = R + i * d;                                                                   \
            for (int64_t t = 0; t < d; ++t) r[t] += acc[t];                                     \
        }                                                                                       \
        *J = jj;                                                                                \
    }

DLRL_KERNELS(float, f32)
DLRL_KERNELS(double, f64)

/* ---------------------------------------------------------------------------------------
 * The fused training step's outer blocks (ops/chain_loss.py): the first and last block of
 * the DLRL chain, the sparse loss between them and both blocks' backward, without forming
 * U, U's gradient or any m x d / n x d intermediate in torch.
 *
 *   first block (rows i):  y_i = act(W1(i,:) N1)        u_i = y_i Mid  (Mid = X2...X_{I-1})
 *   last block (cols j):   v_j = act(WI(j,:) NI)        (WI(j,:) = row j of W_I or of W_I^T)
 *   loss:                  e = u_i.v_j + ue_i.ve_j - x_ij,  J = sum e^2 (double; caller halves)
 *   backward (unit grad):  r_i = sum_j e v_j   (complete at the end of row i: CSR order)
 *                          gMid += y_i^T r_i,  gy_i = (r_i Mid^T) * [y_i > 0],
 *                          gW1(i,:) = gy_i N1^T,  gN1 += W1(i,:)^T gy_i,  gue_i = sum_j e ve_j
 *                          q_j = sum_i e u_i  (complete after all rows: a second loop over
 *                          columns) -> gv_j = q_j * [v_j > 0],  gWI(j,:) = gv_j NI^T,
 *                          gNI += WI(j,:)^T gv_j,  gve_j = sum_i e ue_i
 * W(i, s) is read as W[i*sr + s*sc] (a tall W row-major, or a wide one read transposed);
 * the gradient gW is written with the same strides. The d x d matrices are transposed into
 * local arrays once so that every inner loop runs over contiguous memory with trip count d.
 */
/* d x d scratch arrays live on the stack only in builds for a small d (at most 32: 8 KiB per
 * float64 array); larger and generic builds allocate them, so that a thread with a small stack
 * (the pool thread, user threads) never overflows at d = 128 */
#define STACK_OK (DLRL_D > 0 && DLRL_D <= 32)
#define STACK_DD (STACK_OK ? DLRL_D * DLRL_D : 1)
/* d x d and row helpers shared by the chain and published-operator kernels (static, so each
 * specialised build inlines them with its compile-time d) */
#define DLRL_SMALL(T, SUF)                                                                      \
    /* out = x A: a row vector times a d x d row-major matrix (out[t] = sum_s x[s] A[s][t]) */  \
    static inline void vecmat_##SUF(int64_t d_, const T *restrict x, const T *restrict A,      \
                                    T *restrict out) {                                           \
        const int64_t d = DIM(d_);                                                              \
        for (int64_t t = 0; t < d; ++t) out[t] = 0;                                             \
        for (int64_t s = 0; s < d; ++s) {                                                       \
            const T *restrict ar = A + s * d;                                                   \
            for (int64_t t = 0; t < d; ++t) out[t] += x[s] * ar[t];                             \
        }                                                                                       \
    }                                                                                           \
    /* G += a^T b (d x d, row-major) */                                                         \
    static inline void outer_add_##SUF(int64_t d_, const T *restrict a, const T *restrict b,   \
                                       T *restrict G) {                                          \
        const int64_t d = DIM(d_);                                                              \
        for (int64_t s = 0; s < d; ++s) {                                                       \
            T *restrict gr = G + s * d;                                                         \
            for (int64_t t = 0; t < d; ++t) gr[t] += a[s] * b[t];                               \
        }                                                                                       \
    }                                                                                           \
    /* row r of a strided W (W(r, s) = W[r*sr + s*sc]) into w, or w into that row */           \
    static inline void load_row_##SUF(int64_t d_, const T *restrict W, int64_t r, int64_t sr,  \
                                      int64_t sc, T *restrict w) {                               \
        const int64_t d = DIM(d_);                                                              \
        for (int64_t s = 0; s < d; ++s) w[s] = W[r * sr + s * sc];                              \
    }                                                                                           \
    static inline void store_row_##SUF(int64_t d_, const T *restrict w, int64_t r, int64_t sr, \
                                       int64_t sc, T *restrict W) {                              \
        const int64_t d = DIM(d_);                                                              \
        for (int64_t s = 0; s < d; ++s) W[r * sr + s * sc] = w[s];                              \
    }                                                                                           \
    static void tr_##SUF(int64_t d_, const T *restrict A, T *restrict B) {                      \
        const int64_t d = DIM(d_);                                                              \
        for (int64_t i = 0; i < d; ++i)                                                         \
            for (int64_t j = 0; j < d; ++j) B[j * d + i] = A[i * d + j];                        \
    }                                                                                           \
    /* C = op(A) op(B), op = transpose when the flag is set (d x d, row-major) */              \
    static void mm_##SUF(int64_t d_, const T *restrict A, int ta, const T *restrict B, int tb,  \
                         T *restrict C) {                                                        \
        const int64_t d = DIM(d_);                                                              \
        for (int64_t i = 0; i < d * d; ++i) C[i] = 0;                                           \
        for (int64_t i = 0; i < d; ++i)                                                         \
            for (int64_t s = 0; s < d; ++s) {                                                   \
                const T a = ta ? A[s * d + i] : A[i * d + s];                                   \
                T *restrict c = C + i * d;                                                      \
                if (tb)                                                                         \
                    for (int64_t j = 0; j < d; ++j) c[j] += a * B[j * d + s];                   \
                else                                                                            \
                    for (int64_t j = 0; j < d; ++j) c[j] += a * B[s * d + j];                   \
            }                                                                                   \
    }                                                                                           \
    /* one block row's backward from the masked output gradient gt: gW(r,:) = gt N^T (nt = N^T) \
     * and gN += W(r,:)^T gt, with w = W(r,:) already loaded */                                 \
    static inline void block_row_backward_##SUF(int64_t d_, const T *restrict gt,              \
                                                const T *restrict w, const T *restrict nt,       \
                                                int64_t r, int64_t sr, int64_t sc,               \
                                                T *restrict gW, T *restrict gN) {                \
        const int64_t d = DIM(d_);                                                              \
        ACC_DECL2(T, g);                                                                        \
        vecmat_##SUF(d, gt, nt, g);                                                             \
        store_row_##SUF(d, g, r, sr, sc, gW);                                                   \
        outer_add_##SUF(d, w, gt, gN);                                                          \
    }

DLRL_SMALL(float, f32)
DLRL_SMALL(double, f64)

#define DLRL_CHAIN(T, SUF)                                                                      \
    /* v_j = act(W(j,:) N) for j in [j0, j1): the last block's rows (n x d, row-major Y) */     \
    void dlrl_chain_cols_fwd_##SUF(int64_t j0, int64_t j1, int64_t d_, const T *restrict W,    \
                                   int64_t sr, int64_t sc, const T *restrict N, int relu,        \
                                   T *restrict Y) {                                              \
        const int64_t d = DIM(d_);                                                              \
        ACC_DECL2(T, w);                                                                        \
        for (int64_t j = j0; j < j1; ++j) {                                                     \
            T *restrict out = Y + j * d;                                                        \
            load_row_##SUF(d, W, j, sr, sc, w);                                                 \
            vecmat_##SUF(d, w, N, out);                                                         \
            if (relu) /* y < 0 ? 0 : y keeps NaN, as torch.relu */                              \
                for (int64_t t = 0; t < d; ++t) out[t] = out[t] < 0 ? (T)0 : out[t];            \
        }                                                                                       \
    }                                                                                           \
    /* the row pass over rows [i0, i1) (entries crow[i0] .. crow[i1]); Q, Qe, gN, gMid and   \
     * *J belong to this call (zeroed here: two threads get separate ones and the caller adds \
     * them); gW rows and gue rows i0..i1 are written (zero for a row with no entries) */     \
    int dlrl_chain_rows_##SUF(int64_t i0, int64_t i1, int64_t n, int64_t d_, int64_t k,      \
                               const int64_t *restrict crow, const int64_t *restrict cols,       \
                               const T *restrict values, const T *restrict W, int64_t sr,        \
                               int64_t sc, const T *restrict N, const T *restrict Mid, int relu, \
                               const T *restrict Vt, const T *restrict ue, const T *restrict ve, \
                               int with_grad, double *restrict J, T *restrict Q, T *restrict Qe, \
                               T *restrict gW, T *restrict gN, T *restrict gMid,                 \
                               T *restrict gue) {                                                \
        const int64_t d = DIM(d_);                                                              \
        /* N^T and Mid^T: on the stack for a small specialised d, else on the heap */          \
        T NT[STACK_DD], MT[STACK_DD];                                                           \
        T *heap = STACK_OK ? 0 : (T *)malloc((size_t)(2 * d * d + 1) * sizeof(T));              \
        if (!STACK_OK && !heap) return -1;                                                     \
        T *nt = STACK_OK ? NT : heap, *mt = STACK_OK ? MT : heap + d * d;                       \
        tr_##SUF(d, N, nt);                                                                     \
        if (Mid) tr_##SUF(d, Mid, mt);                                                          \
        if (with_grad) {                                                                        \
            memset(Q, 0, (size_t)(n * d) * sizeof(T));                                          \
            if (k) memset(Qe, 0, (size_t)(n * k) * sizeof(T));                                  \
            memset(gN, 0, (size_t)(d * d) * sizeof(T));                                         \
            if (Mid) memset(gMid, 0, (size_t)(d * d) * sizeof(T));                              \
        }                                                                                       \
        ACC_DECL2(T, w);                                                                        \
        ACC_DECL2(T, y);                                                                        \
        ACC_DECL2(T, u);                                                                        \
        ACC_DECL2(T, acc);                                                                      \
        ACC_DECL2(T, gy);                                                                       \
        T uex[8], acce[8];                                                                      \
        double jj = 0.0;                                                                        \
        for (int64_t i = i0; i < i1; ++i) {                                                     \
            const int64_t kb = crow[i], ke = crow[i + 1];                                       \
            if (kb == ke) {                                                                     \
                if (with_grad) {                                                                \
                    for (int64_t s = 0; s < d; ++s) gW[i * sr + s * sc] = 0;                    \
                    for (int64_t c = 0; c < k; ++c) gue[i * k + c] = 0;                         \
                }                                                                               \
                continue;                                                                       \
            }                                                                                   \
            load_row_##SUF(d, W, i, sr, sc, w);                                                 \
            vecmat_##SUF(d, w, N, y);                                                           \
            if (relu)                                                                           \
                for (int64_t t = 0; t < d; ++t) y[t] = y[t] < 0 ? (T)0 : y[t];                  \
            if (Mid) vecmat_##SUF(d, y, Mid, u);                                                \
            else for (int64_t t = 0; t < d; ++t) u[t] = y[t];                                   \
            for (int64_t c = 0; c < k; ++c) { uex[c] = ue[i * k + c]; acce[c] = 0; }            \
            for (int64_t t = 0; t < d; ++t) acc[t] = 0;                                         \
            for (int64_t kk = kb; kk < ke; ++kk) {                                              \
                const int64_t j = cols[kk];                                                     \
                const T *restrict v = Vt + j * d;                                               \
                T s = 0;                                                                        \
                for (int64_t t = 0; t < d; ++t) s += u[t] * v[t];                               \
                for (int64_t c = 0; c < k; ++c) s += uex[c] * ve[j * k + c];                    \
                const T ek = s - values[kk];                                                    \
                jj += (double)ek * (double)ek;                                                  \
                if (with_grad) {                                                                \
                    T *restrict q = Q + j * d;                                                  \
                    for (int64_t t = 0; t < d; ++t) {                                           \
                        acc[t] += ek * v[t];                                                    \
                        q[t] += ek * u[t];                                                      \
                    }                                                                           \
                    for (int64_t c = 0; c < k; ++c) {                                           \
                        acce[c] += ek * ve[j * k + c];                                          \
                        Qe[j * k + c] += ek * uex[c];                                           \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
            if (!with_grad) continue;                                                           \
            for (int64_t c = 0; c < k; ++c) gue[i * k + c] = acce[c];                           \
            if (Mid) {                                                                          \
                outer_add_##SUF(d, y, acc, gMid);                                               \
                vecmat_##SUF(d, acc, mt, gy);                                                   \
            } else {                                                                            \
                for (int64_t s = 0; s < d; ++s) gy[s] = acc[s];                                 \
            }                                                                                   \
            if (relu)                                                                           \
                for (int64_t s = 0; s < d; ++s) gy[s] = y[s] > 0 ? gy[s] : (T)0;                \
            block_row_backward_##SUF(d, gy, w, nt, i, sr, sc, gW, gN);                          \
        }                                                                                       \
        *J = jj;                                                                                \
        free(heap);                                                                             \
        return 0;                                                                               \
    }                                                                                           \
    /* the last block's backward over columns [j0, j1): gv_j = q_j * [v_j > 0],              \
     * gW(j,:) = gv_j N^T, gN += W(j,:)^T gv_j (gN zeroed here) */                             \
    int dlrl_chain_cols_bwd_##SUF(int64_t j0, int64_t j1, int64_t d_, const T *restrict W,    \
                                   int64_t sr, int64_t sc, const T *restrict N, int relu,        \
                                   const T *restrict Y, const T *restrict Q, T *restrict gW,     \
                                   T *restrict gN) {                                             \
        const int64_t d = DIM(d_);                                                              \
        T NT[STACK_DD];                                                                         \
        T *nt = STACK_OK ? NT : (T *)malloc((size_t)(d * d + 1) * sizeof(T));                   \
        if (!nt) return -1;                                                                     \
        tr_##SUF(d, N, nt);                                                                     \
        memset(gN, 0, (size_t)(d * d) * sizeof(T));                                             \
        ACC_DECL2(T, w);                                                                        \
        ACC_DECL2(T, gv);                                                                       \
        for (int64_t j = j0; j < j1; ++j) {                                                     \
            const T *restrict q = Q + j * d;                                                    \
            const T *restrict v = Y + j * d;                                                    \
            for (int64_t t = 0; t < d; ++t) gv[t] = (relu && !(v[t] > 0)) ? (T)0 : q[t];         \
            load_row_##SUF(d, W, j, sr, sc, w);                                                 \
            block_row_backward_##SUF(d, gv, w, nt, j, sr, sc, gW, gN);                          \
        }                                                                                       \
        if (!STACK_OK) free(nt);                                                                \
        return 0;                                                                               \
    }

DLRL_CHAIN(float, f32)
DLRL_CHAIN(double, f64)

/* The middle blocks of the chain (d x d each, I2 = I - 2 of them) and their backward, so that
 * the fused loss makes no torch call per middle block (at ML-100K's size each torch op costs
 * about what a whole d x d product costs here):
 *   T_k = W_k N_k (or W_k^T N_k when wide_k),  Y_k = act(T_k),  X_k = Y_k (or Y_k^T when wide_k)
 *   mids_0 = X_0,  mids_j = mids_{j-1} X_j     (Mid = mids_{I2-1}: the product the row pass uses)
 * backward from gM = dJ/dMid (block_chain.middle_backward and block_backward, the same
 * formulas): walking j from the right, gX_j = mids_{j-1}^T gM (gM for j = 0) and then
 * gM <- gM X_j^T; gT = (gX_j or its transpose) * [Y_j > 0]; gW_j = gT N_j^T (wide: N_j gT^T),
 * gN_j = W_j^T gT (wide: W_j gT). All arrays d x d row-major, stacked [I2, d, d]. */
#define DLRL_MID(T, SUF)                                                                        \
    void dlrl_chain_mid_fwd_##SUF(int64_t I2, int64_t d_, const T *restrict Wm,                \
                                  const T *restrict Nm, const int64_t *restrict wide, int relu,  \
                                  T *restrict Y, T *restrict X, T *restrict mids) {              \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        for (int64_t k = 0; k < I2; ++k) {                                                      \
            T *y = Y + k * dd;                                                                  \
            mm_##SUF(d, Wm + k * dd, (int)wide[k], Nm + k * dd, 0, y);                          \
            if (relu)                                                                           \
                for (int64_t i = 0; i < dd; ++i) y[i] = y[i] < 0 ? (T)0 : y[i];                 \
            if (wide[k]) tr_##SUF(d, y, X + k * dd);                                            \
            else memcpy(X + k * dd, y, (size_t)dd * sizeof(T));                                 \
            if (k == 0) memcpy(mids, X, (size_t)dd * sizeof(T));                                \
            else mm_##SUF(d, mids + (k - 1) * dd, 0, X + k * dd, 0, mids + k * dd);             \
        }                                                                                       \
    }                                                                                           \
    /* gW, gN: [I2, d, d]; returns 0, or -1 when the generic build cannot get scratch memory */ \
    int dlrl_chain_mid_bwd_##SUF(int64_t I2, int64_t d_, const T *restrict Wm,                 \
                                 const T *restrict Nm, const int64_t *restrict wide, int relu,   \
                                 const T *restrict Y, const T *restrict X,                       \
                                 const T *restrict mids, const T *restrict gMid,                 \
                                 T *restrict gW, T *restrict gN) {                               \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        T stack[4 * STACK_DD];                                                                  \
        T *buf = STACK_OK ? stack : (T *)malloc((size_t)(4 * dd) * sizeof(T));                  \
        if (!buf) return -1;                                                                    \
        T *gM = buf, *gX = buf + dd, *gT = buf + 2 * dd, *tmp = buf + 3 * dd;                  \
        memcpy(gM, gMid, (size_t)dd * sizeof(T));                                               \
        for (int64_t j = I2 - 1; j >= 0; --j) {                                                 \
            if (j == 0) memcpy(gX, gM, (size_t)dd * sizeof(T));                                 \
            else {                                                                              \
                mm_##SUF(d, mids + (j - 1) * dd, 1, gM, 0, gX);                                 \
                mm_##SUF(d, gM, 0, X + j * dd, 1, tmp);                                         \
                memcpy(gM, tmp, (size_t)dd * sizeof(T));                                        \
            }                                                                                   \
            if (wide[j]) tr_##SUF(d, gX, gT);                                                   \
            else memcpy(gT, gX, (size_t)dd * sizeof(T));                                        \
            const T *y = Y + j * dd;                                                            \
            if (relu)                                                                           \
                for (int64_t i = 0; i < dd; ++i) gT[i] = y[i] > 0 ? gT[i] : (T)0;               \
            const T *W = Wm + j * dd, *N = Nm + j * dd;                                         \
            if (wide[j]) {                                                                      \
                mm_##SUF(d, N, 0, gT, 1, gW + j * dd);                                          \
                mm_##SUF(d, W, 0, gT, 0, gN + j * dd);                                          \
            } else {                                                                            \
                mm_##SUF(d, gT, 0, N, 1, gW + j * dd);                                          \
                mm_##SUF(d, W, 1, gT, 0, gN + j * dd);                                          \
            }                                                                                   \
        }                                                                                       \
        if (!STACK_OK) free(buf);                                                               \
        return 0;                                                                               \
    }

DLRL_MID(float, f32)
DLRL_MID(double, f64)

/* The published code's block operator without its eigen-decomposition (ops/pinv.py,
 * ``published_operator``; the eigh in between is LAPACK's, through torch), for I matrices d x d:
 *   pub_power:  st_k = 0.002 max_i |S_k,ii|,  G_k = 0.5 (S_k + st_k)^(e_k) elementwise
 *   pub_pinv:   from G_k = Q diag(lam) Q^T (QT: the eigenvectors as rows, i.e. eigh's column-major
 *               Q as it lies): inv_i = 1/lam_i where |lam_i| > rtol max|lam|, else 0;
 *               M_k = 0.5 Q diag(inv) Q^T; Q also written row-major (what the backward reads)
 *   pub_backward: gG = Q [ -inv_i inv_j g_ij + (c_i inv_j^2 + inv_i^2 c_j) g_ji ] Q^T with
 *               g = Q^T (0.5 gM) Q and c_i = [lam_i cut] (Golub-Pereyra in G's eigenbasis);
 *               gB = 0.5 gG e B^(e-1) (0 where e = 0), B = S + st; the shift's adjoint
 *               0.002 sum(gB) split evenly over the diagonal entries of largest |S_ii|, times
 *               sign(S_ii); gS = gB + diag(that).
 * The power is C's pow (NaN for a negative base, as torch.pow). */
#define DLRL_PUB(T, SUF, POW)                                                                   \
    static T shift_##SUF(int64_t d, const T *S) {                                               \
        T mx = 0;                                                                               \
        for (int64_t i = 0; i < d; ++i) {                                                       \
            const T a = S[i * d + i] < 0 ? -S[i * d + i] : S[i * d + i];                        \
            if (a > mx || a != a) mx = a;                                                       \
        }                                                                                       \
        return (T)0.002 * mx;                                                                   \
    }                                                                                           \
    void dlrl_pub_power_##SUF(int64_t I, int64_t d_, const T *restrict S,                      \
                              const T *restrict expo, T *restrict G) {                           \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        for (int64_t k = 0; k < I; ++k) {                                                       \
            const T *s = S + k * dd;                                                            \
            const T st = shift_##SUF(d, s), e = expo[k];                                        \
            for (int64_t i = 0; i < dd; ++i) G[k * dd + i] = (T)0.5 * POW(s[i] + st, e);       \
        }                                                                                       \
    }                                                                                           \
    void dlrl_pub_pinv_##SUF(int64_t I, int64_t d_, const T *restrict QT, const T *restrict lam,\
                             double rtol, T *restrict M, T *restrict inv, T *restrict Q) {       \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        for (int64_t k = 0; k < I; ++k) {                                                       \
            const T *qt = QT + k * dd, *l = lam + k * d;                                        \
            T *iv = inv + k * d, *mk = M + k * dd;                                              \
            for (int64_t i = 0; i < d; ++i)                                                     \
                for (int64_t t = 0; t < d; ++t) Q[k * dd + i * d + t] = qt[t * d + i];          \
            T mx = 0;                                                                           \
            for (int64_t i = 0; i < d; ++i) {                                                   \
                const T a = l[i] < 0 ? -l[i] : l[i];                                            \
                if (a > mx) mx = a;                                                             \
            }                                                                                   \
            const T cut = (T)rtol * mx;                                                         \
            for (int64_t i = 0; i < d; ++i) {                                                   \
                const T a = l[i] < 0 ? -l[i] : l[i];                                            \
                iv[i] = a > cut ? (T)1 / l[i] : (T)0;                                           \
            }                                                                                   \
            /* M = 0.5 sum_t inv_t q_t q_t^T  (q_t: column t of Q = row t of QT) */            \
            for (int64_t i = 0; i < dd; ++i) mk[i] = 0;                                         \
            for (int64_t i = 0; i < d; ++i)                                                     \
                for (int64_t t = 0; t < d; ++t) {                                               \
                    const T a = (T)0.5 * qt[t * d + i] * iv[t];                                 \
                    if (a == 0) continue;                                                       \
                    T *restrict row = mk + i * d;                                               \
                    const T *restrict e = qt + t * d;                                           \
                    for (int64_t j = 0; j < d; ++j) row[j] += a * e[j];                         \
                }                                                                               \
        }                                                                                       \
    }                                                                                           \
    int dlrl_pub_backward_##SUF(int64_t I, int64_t d_, const T *restrict S,                    \
                                const T *restrict expo, const T *restrict Q,                     \
                                const T *restrict inv, const T *restrict gM, T *restrict gS) {   \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        T stack[3 * STACK_DD];                                                                  \
        T *buf = STACK_OK ? stack : (T *)malloc((size_t)(3 * dd) * sizeof(T));                  \
        if (!buf) return -1;                                                                    \
        T *g = buf, *c = buf + dd, *tmp = buf + 2 * dd;                                         \
        for (int64_t k = 0; k < I; ++k) {                                                       \
            const T *q = Q + k * dd, *iv = inv + k * d, *s = S + k * dd;                        \
            T *gs = gS + k * dd;                                                                \
            /* g = Q^T (0.5 gM) Q */                                                            \
            mm_##SUF(d, gM + k * dd, 0, q, 0, tmp);                                             \
            mm_##SUF(d, q, 1, tmp, 0, g);                                                       \
            for (int64_t i = 0; i < d; ++i)                                                     \
                for (int64_t j = 0; j < d; ++j) {                                               \
                    const T ci = iv[i] == 0, cj = iv[j] == 0;                                   \
                    c[i * d + j] = (T)0.5 * (-iv[i] * iv[j] * g[i * d + j] +                    \
                                             (ci * iv[j] * iv[j] + iv[i] * iv[i] * cj) * g[j * d + i]); \
                }                                                                               \
            /* gG = Q c Q^T, into gs */                                                         \
            mm_##SUF(d, q, 0, c, 0, tmp);                                                       \
            mm_##SUF(d, tmp, 0, q, 1, gs);                                                      \
            const T st = shift_##SUF(d, s), e = expo[k];                                        \
            T gst = 0;                                                                          \
            for (int64_t i = 0; i < dd; ++i) {                                                  \
                const T gb = e == 0 ? (T)0 : (T)0.5 * gs[i] * (e * POW(s[i] + st, e - 1));      \
                gs[i] = gb;                                                                     \
                gst += gb;                                                                      \
            }                                                                                   \
            T mx = 0;                                                                           \
            int64_t ntop = 0;                                                                   \
            for (int64_t i = 0; i < d; ++i) {                                                   \
                const T a = s[i * d + i] < 0 ? -s[i * d + i] : s[i * d + i];                    \
                if (a > mx) { mx = a; ntop = 0; }                                               \
                if (a == mx) ++ntop;                                                            \
            }                                                                                   \
            for (int64_t i = 0; i < d; ++i) {                                                   \
                const T v = s[i * d + i], a = v < 0 ? -v : v;                                   \
                if (a == mx && ntop > 0)                                                        \
                    gs[i * d + i] += (T)0.002 * gst / (T)ntop * (T)((v > 0) - (v < 0));         \
            }                                                                                   \
        }                                                                                       \
        if (!STACK_OK) free(buf);                                                               \
        return 0;                                                                               \
    }

DLRL_PUB(float, f32, powf)
DLRL_PUB(double, f64, pow)

/* The paper operator's power (ops/lowrank_block.py ``block_power``, eigh route, spectral
 * normaliser) without its eigen-decomposition (torch's eigh in between), I matrices d x d with an
 * exponent a_k each; the torch code of spd_power / lowrank_block is the twin:
 *   spd_sym:  B_k = (S_k + S_k^T) / 2 (what eigh decomposes)
 *   spd_fwd:  from B_k = Q diag(lam) Q^T (QT: the eigenvectors as rows = eigh's column-major Q):
 *             range lam_i > rtol max(lam_max, 0); f_i = lam_i^a on it, 0 off it;
 *             c = max(lam_max > 0 ? max(lam_max, tiny)^a : 0, tiny); N = Q diag(f) Q^T / c;
 *             v = the top eigenvector; Q also written row-major (the op's saved layout)
 *   spd_bwd:  gP = gN / c - (<gN, N> / c) v v^T (the normaliser's adjoint, d lam_max = v v^T);
 *             gS = sym(Q (Gamma o Q^T sym(gP) Q) Q^T), Gamma the Loewner matrix of f:
 *             a = 1/2: 1/(s_i + s_j) with s = sqrt(lam) on the range, 0 off it (0 when both off);
 *             else both in range: l_j^(a-1) expm1(a t)/expm1(t), t = log1p((l_i - l_j)/l_j)
 *             (a when |t| < 1e-12); one in range: l^(a-1) of that one; neither: 0 (1 if a = 1).
 * Why C: in torch these are ~75 small ops per epoch around the eigh (~0.45 ms at d = 20). */
#define DLRL_SPD(T, SUF, POW, SQRT, LOG1P, EXPM1, TINY)                                         \
    void dlrl_spd_sym_##SUF(int64_t I, int64_t d_, const T *restrict S, T *restrict B) {       \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        for (int64_t k = 0; k < I; ++k)                                                         \
            for (int64_t i = 0; i < d; ++i)                                                     \
                for (int64_t j = 0; j < d; ++j)                                                 \
                    B[k * dd + i * d + j] = (T)0.5 * (S[k * dd + i * d + j] + S[k * dd + j * d + i]); \
    }                                                                                           \
    void dlrl_spd_fwd_##SUF(int64_t I, int64_t d_, const T *restrict lam, const T *restrict QT, \
                            const double *restrict a, double rtol, T *restrict N,               \
                            T *restrict c, T *restrict v, T *restrict Q) {                       \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        ACC_DECL2(T, f);                                                                        \
        for (int64_t k = 0; k < I; ++k) {                                                       \
            const T *l = lam + k * d, *qt = QT + k * dd;                                        \
            T *n = N + k * dd, *q = Q + k * dd;                                                 \
            const T ak = (T)a[k], top = l[d - 1];                                               \
            const T floor = (T)rtol * (top > 0 ? top : (T)0);                                   \
            for (int64_t i = 0; i < d; ++i) f[i] = l[i] > floor ? POW(l[i], ak) : (T)0;         \
            T ck = top > 0 ? POW(top < TINY ? TINY : top, ak) : (T)0;                           \
            ck = ck < TINY ? TINY : ck; /* (NaN stays NaN, as clamp_min) */                     \
            c[k] = ck;                                                                          \
            for (int64_t i = 0; i < d; ++i) {                                                   \
                v[k * d + i] = qt[(d - 1) * d + i];                                             \
                for (int64_t j = 0; j < d; ++j) q[i * d + j] = qt[j * d + i];                   \
            }                                                                                   \
            for (int64_t i = 0; i < dd; ++i) n[i] = 0;                                          \
            for (int64_t t = 0; t < d; ++t) {                                                   \
                if (f[t] == 0) continue;                                                        \
                const T *e = qt + t * d;                                                        \
                for (int64_t i = 0; i < d; ++i) {                                               \
                    const T ei = e[i] * f[t];                                                   \
                    T *restrict row = n + i * d;                                                \
                    for (int64_t j = 0; j < d; ++j) row[j] += ei * e[j];                        \
                }                                                                               \
            }                                                                                   \
            for (int64_t i = 0; i < dd; ++i) n[i] /= ck;                                        \
        }                                                                                       \
    }                                                                                           \
    int dlrl_spd_bwd_##SUF(int64_t I, int64_t d_, const T *restrict gN, const T *restrict N,   \
                           const T *restrict c, const T *restrict v, const T *restrict lam,     \
                           const T *restrict Q, const double *restrict a, double rtol,           \
                           T *restrict gS) {                                                     \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        T stack[4 * STACK_DD];                                                                  \
        T *buf = STACK_OK ? stack : (T *)malloc((size_t)(4 * dd) * sizeof(T));                  \
        if (!buf) return -1;                                                                    \
        T *C = buf, *M = buf + dd, *tmp = buf + 2 * dd, *Gam = buf + 3 * dd;                    \
        for (int64_t k = 0; k < I; ++k) {                                                       \
            const T *gn = gN + k * dd, *nk = N + k * dd, *vk = v + k * d, *l = lam + k * d;     \
            const T *q = Q + k * dd;                                                            \
            T *gs = gS + k * dd;                                                                \
            const T ck = c[k], ak = (T)a[k];                                                    \
            T inner = 0;                                                                        \
            for (int64_t i = 0; i < dd; ++i) inner += gn[i] * nk[i];                            \
            inner /= ck;                                                                        \
            for (int64_t i = 0; i < d; ++i)                                                     \
                for (int64_t j = 0; j < d; ++j) tmp[i * d + j] = gn[i * d + j] / ck - inner * (vk[i] * vk[j]); \
            for (int64_t i = 0; i < d; ++i)                                                     \
                for (int64_t j = 0; j < d; ++j) C[i * d + j] = (T)0.5 * (tmp[i * d + j] + tmp[j * d + i]); \
            const T top = l[d - 1], floor = (T)rtol * (top > 0 ? top : (T)0);                   \
            for (int64_t i = 0; i < d; ++i)                                                     \
                for (int64_t j = 0; j < d; ++j) {                                               \
                    const int ri = l[i] > floor, rj = l[j] > floor;                             \
                    T g;                                                                        \
                    if (ak == (T)0.5) {                                                         \
                        const T si = ri ? SQRT(l[i] > 0 ? l[i] : (T)0) : (T)0;                  \
                        const T sj = rj ? SQRT(l[j] > 0 ? l[j] : (T)0) : (T)0;                  \
                        g = si + sj > 0 ? (T)1 / (si + sj) : (T)0;                              \
                    } else if (ri && rj) {                                                      \
                        const T t = LOG1P((l[i] - l[j]) / l[j]);                                \
                        const T r = (t < 0 ? -t : t) < (T)1e-12 ? ak : EXPM1(ak * t) / EXPM1(t); \
                        g = POW(l[j], ak - 1) * r;                                              \
                    } else if (ri || rj) {                                                      \
                        g = POW(ri ? l[i] : l[j], ak - 1);                                      \
                    } else {                                                                    \
                        g = ak == (T)1 ? (T)1 : (T)0;                                           \
                    }                                                                           \
                    Gam[i * d + j] = g;                                                         \
                }                                                                               \
            mm_##SUF(d, q, 1, C, 0, tmp);   /* Q^T sym(gP) */                                  \
            mm_##SUF(d, tmp, 0, q, 0, M);   /* ... Q */                                        \
            for (int64_t i = 0; i < dd; ++i) M[i] *= Gam[i];                                    \
            mm_##SUF(d, q, 0, M, 0, tmp);   /* Q (Gamma o M) */                                \
            mm_##SUF(d, tmp, 0, q, 1, C);   /* ... Q^T */                                      \
            for (int64_t i = 0; i < d; ++i)                                                     \
                for (int64_t j = 0; j < d; ++j) gs[i * d + j] = (T)0.5 * (C[i * d + j] + C[j * d + i]); \
        }                                                                                       \
        if (!STACK_OK) free(buf);                                                               \
        return 0;                                                                               \
    }

DLRL_SPD(float, f32, powf, sqrtf, log1pf, expm1f, 1.17549435e-38f)
DLRL_SPD(double, f64, pow, sqrt, log1p, expm1, 2.2250738585072014e-308)

/* The DLRL model's per-epoch gram and eta's adjoint through it (model.py ``_gram_parts`` and
 * ``_eta_grad`` are the torch twins), for refresh "fixed", I blocks of d x d:
 *   eta_gram: e = clamp(eta, lo, hi) (NaN stays NaN), t_k = c_k / e,
 *             S_k = G0_k + t_k G1_k + t_k^2 G2_k
 *   eta_grad: dJ/deta = -(1/e) sum_k t_k <gS_k, G1_k + 2 t_k G2_k>  where lo <= eta <= hi (the
 *             clamp's rule: bounds included; NaN eta is outside), else 0; the inner products
 *             accumulate in double.
 * Why C: in torch these are ~15 ops on 5 x 20 x 20 numbers each epoch, each op costing ~3 us
 * of dispatch where the arithmetic is ~1 us. eta is read through a pointer (no host read). */
#define DLRL_ETA(T, SUF)                                                                        \
    void dlrl_eta_gram_##SUF(int64_t I, int64_t d_, const T *restrict G0, const T *restrict G1, \
                             const T *restrict G2, const T *restrict c, const T *restrict eta,  \
                             double lo, double hi, T *restrict S, T *restrict t) {              \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        const T e0 = *eta, e = e0 < (T)lo ? (T)lo : (e0 > (T)hi ? (T)hi : e0);                  \
        for (int64_t k = 0; k < I; ++k) {                                                       \
            const T tk = c[k] / e, t2 = tk * tk;                                                \
            t[k] = tk;                                                                          \
            for (int64_t i = 0; i < dd; ++i)                                                    \
                S[k * dd + i] = G0[k * dd + i] + tk * G1[k * dd + i] + t2 * G2[k * dd + i];     \
        }                                                                                       \
    }                                                                                           \
    void dlrl_eta_grad_##SUF(int64_t I, int64_t d_, const T *restrict gS, const T *restrict G1, \
                             const T *restrict G2, const T *restrict t, const T *restrict eta,  \
                             double lo, double hi, T *restrict out) {                           \
        const int64_t d = DIM(d_), dd = d * d;                                                  \
        const T e = *eta;                                                                       \
        if (!(e >= (T)lo && e <= (T)hi)) {                                                      \
            *out = 0;                                                                           \
            return;                                                                             \
        }                                                                                       \
        double g = 0;                                                                           \
        for (int64_t k = 0; k < I; ++k) {                                                       \
            double a = 0, b = 0;                                                                \
            for (int64_t i = 0; i < dd; ++i) {                                                  \
                a += (double)gS[k * dd + i] * (double)G1[k * dd + i];                           \
                b += (double)gS[k * dd + i] * (double)G2[k * dd + i];                           \
            }                                                                                   \
            g += (double)t[k] * (a + 2.0 * (double)t[k] * b);                                   \
        }                                                                                       \
        *out = (T)(-g / (double)e);                                                             \
    }

DLRL_ETA(float, f32)
DLRL_ETA(double, f64)

/* One epoch of the DLRL fit's plateau schedule (model.py ``_Plateau``: torch's
 * ReduceLROnPlateau(mode="min", threshold=1e-4 relative, cooldown=0) plus the stop rule
 * lr < min_lr; its torch code is the twin) on the schedule's own state tensors, and the lr Adam
 * then uses (0 once stopped) when adam_lr is not NULL:
 *   better = J < best (1 - 1e-4); best = better ? J : best; bad = better ? 0 : bad + 1;
 *   if bad > patience: lr = lr * factor when lr - lr * factor > 1e-8, and bad = 0;
 *   stopped |= lr < min_lr.
 * Why C: in torch this is ~20 ops on 0-d tensors each epoch (~50 us), and reading the values into
 * Python instead would be a host read per epoch. The decisions must be the twin's exactly: the
 * product lr * factor goes through a volatile so that -ffast-math cannot rewrite lr - lr * factor
 * as lr * (1 - factor) (a different rounding); the other comparisons are single operations. */
#define DLRL_PLATEAU(T, SUF)                                                                    \
    void dlrl_plateau_step_##SUF(const T *J_, double *lr, double *best, int64_t *bad,          \
                                 uint8_t *stopped, double factor, int64_t patience,             \
                                 double min_lr, double *adam_lr) {                               \
        const double J = (double)*J_;                                                           \
        const int better = J < *best * (1.0 - 1e-4);                                            \
        if (better) *best = J;                                                                  \
        int64_t b = better ? 0 : *bad + 1;                                                      \
        if (b > patience) {                                                                     \
            volatile double reduced = *lr * factor;                                             \
            const double nw = reduced;                                                          \
            if (*lr - nw > 1e-8) *lr = nw;                                                      \
            b = 0;                                                                              \
        }                                                                                       \
        *bad = b;                                                                               \
        *stopped = (uint8_t)(*stopped || *lr < min_lr);                                         \
        if (adam_lr) *adam_lr = *stopped ? 0.0 : *lr;                                           \
    }

DLRL_PLATEAU(float, f32)
DLRL_PLATEAU(double, f64)

/* the ABI version the loader checks (bump on any signature change), and the d of this build */
int dlrl_native_abi(void) { return 11; }
int dlrl_native_dim(void) { return DLRL_D; }
