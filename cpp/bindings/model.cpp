// _core.Model: the engine's model (config, device and threads; weights, training,
// inference, optimizer state) bound for Python.  Every array and size is checked here with
// a message that names it (convert.h); long calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bind.h"
#include "convert.h"
#include "fastsasrec/model.h"

namespace fsr::bind {

void bind_model(py::module_& m) {
  py::class_<Model>(m, "Model")
      .def(py::init([](const py::dict& cfg, const std::string& device, int threads) {
             return std::make_unique<Model>(config_from_dict(cfg), device, threads);
           }),
           py::arg("config"), py::arg("device") = "cpu", py::arg("threads") = 0)
      .def_property_readonly("n_params", &Model::n_params)
      .def_property_readonly("step", &Model::step)
      .def_property_readonly("device", &Model::device)
      .def_property_readonly("device_index", &Model::device_index)
      .def_property_readonly("threads", &Model::threads,
                             "CPU threads of the model's ops (1 on a GPU)")
      .def("set_threads", &Model::set_threads, py::arg("n"),
           "CPU threads of the model's ops from now on (0 = all cores)")
      .def("tensors", [](const Model& s) {
        py::list out;
        for (const auto& t : s.tensors()) out.append(py::make_tuple(t.name, t.offset, py::tuple(py::cast(t.shape))));
        return out;
      })
      .def("get_params", [](const Model& s) { return to_numpy(s.get_params(), {(py::ssize_t)s.n_params()}); })
      .def("set_params", [](Model& s, py::object a) {
        auto p = arr<float>(a, "params", 1);
        FSR_REQUIRE((size_t)p.shape(0) == s.n_params(), "params must have ", s.n_params(), " values, got ", p.shape(0));
        for (py::ssize_t i = 0; i < p.shape(0); ++i)
          FSR_REQUIRE(std::isfinite(p.data()[i]), "params[", i, "] is not finite");
        s.set_params(std::vector<float>(p.data(), p.data() + p.size()));
      })
      .def("get_grads", [](const Model& s) { return to_numpy(s.get_grads(), {(py::ssize_t)s.n_params()}); })
      .def("init_params", &Model::init_params, py::arg("seed"))
      .def("train_epoch", [](Model& s, py::object items, py::object offsets, int64_t epoch,
                             bool check_signals, py::object stop) -> py::object {
        // check_signals: before every batch, Python's signal handlers run (the GIL taken
        // for that instant); one that raises (Ctrl-C: KeyboardInterrupt) stops the epoch,
        // which puts the weights back as they were when it began, and the exception is
        // raised here.  stop: a callable asked the same way; True stops the epoch the same
        // way and returns None.  Without either, the epoch runs to its end.
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        check_sequences(it, off, s.config().n_items, "sequences");
        FSR_REQUIRE(stop.is_none() || PyCallable_Check(stop.ptr()),
                    "stop must be None or a callable returning a bool");
        std::unique_ptr<py::error_already_set> raised;
        std::function<bool()> ask;
        if (check_signals || !stop.is_none()) {
          ask = [&]() -> bool {
            py::gil_scoped_acquire gil;
            if (check_signals && PyErr_CheckSignals() != 0) {
              raised = std::make_unique<py::error_already_set>();
              return true;
            }
            if (stop.is_none()) return false;
            try {
              return stop().cast<bool>();
            } catch (py::error_already_set& e) {
              raised = std::make_unique<py::error_already_set>(std::move(e));
              return true;
            }
          };
        }
        Model::EpochResult r;
        {
          py::gil_scoped_release nogil;
          r = s.train_epoch(it.data(), off.data(), off.shape(0) - 1, epoch, ask);
        }
        if (raised) throw std::move(*raised);
        if (!r.completed) return py::none();
        return py::float_(r.loss);
      }, py::arg("items"), py::arg("offsets"), py::arg("epoch"), py::arg("check_signals") = false,
         py::arg("stop") = py::none())
      .def("optimizer_state", [](const Model& s) {
        std::vector<float> m, v;
        s.get_optimizer_state(&m, &v);
        const py::ssize_t n = (py::ssize_t)s.n_params();
        return py::make_tuple(to_numpy(std::move(m), {n}), to_numpy(std::move(v), {n}), s.step());
      }, "(m, v, step): AdamW's moments (float32, arena order) and its step count")
      .def("set_optimizer_state", [](Model& s, py::object m_, py::object v_, int64_t step) {
        auto m = arr<float>(m_, "m", 1);
        auto v = arr<float>(v_, "v", 1);
        const py::ssize_t n = (py::ssize_t)s.n_params();
        FSR_REQUIRE(m.shape(0) == n && v.shape(0) == n, "m and v must have ", n,
                    " values each, got ", m.shape(0), " and ", v.shape(0));
        for (py::ssize_t i = 0; i < n; ++i)
          FSR_REQUIRE(std::isfinite(m.data()[i]) && std::isfinite(v.data()[i]) && v.data()[i] >= 0,
                      "optimizer state entry ", i, " is not finite (or v < 0)");
        s.set_optimizer_state(std::vector<float>(m.data(), m.data() + n),
                              std::vector<float>(v.data(), v.data() + n), step);
      }, py::arg("m"), py::arg("v"), py::arg("step"))
      .def("build_batch", [](const Model& s, py::object items, py::object offsets, py::object seqs, int64_t step) {
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        auto sq = arr<int64_t>(seqs, "seqs", 1);
        check_sequences(it, off, s.config().n_items, "sequences");
        for (py::ssize_t i = 0; i < sq.shape(0); ++i)
          FSR_REQUIRE(sq.data()[i] >= 0 && sq.data()[i] < off.shape(0) - 1, "seqs[", i, "] out of range");
        HostBatch b;
        s.build_batch(it.data(), off.data(), sq.data(), (int)sq.shape(0), step, b);
        return batch_to_dict(b);
      })
      .def("target_counts", [](const Model& s, py::object items, py::object offsets) {
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        check_sequences(it, off, s.config().n_items, "sequences");
        const auto c = s.target_counts(it.data(), off.data(), off.shape(0) - 1);
        return to_numpy(c, {(py::ssize_t)c.size()});
      }, py::arg("items"), py::arg("offsets"))
      .def("set_target_counts", [](Model& s, py::object counts) {
        auto c = arr<int64_t>(counts, "counts", 1);
        s.set_target_counts(std::vector<int64_t>(c.data(), c.data() + c.size()));
      }, py::arg("counts"))
      .def("forward_backward", [](Model& s, py::object items, py::object targets, py::object pos, py::object cu, py::object negatives, bool train, bool grad, int64_t step) {
        HostBatch b = batch_from_arrays(items, targets, pos, cu, negatives, s.config());
        py::gil_scoped_release nogil;
        return s.forward_backward(b, train, grad, step);
      }, py::arg("items"), py::arg("targets"), py::arg("pos"), py::arg("cu"), py::arg("negatives"), py::arg("train"), py::arg("grad"), py::arg("step"))
      .def("optimizer_step", &Model::optimizer_step)
      .def("set_lr_scale", &Model::set_lr_scale, py::arg("scale"),
           "learning_rate's multiplier for the steps that follow (1 as built; not saved)")
      .def_property_readonly("lr_scale", &Model::lr_scale)
      .def("session_states", [](Model& s, py::object items, py::object offsets) {
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        check_sequences(it, off, s.config().n_items, "sessions");
        const int64_t B = off.shape(0) - 1;
        std::vector<float> h;
        {
          py::gil_scoped_release nogil;
          h = s.session_states(it.data(), off.data(), B);
        }
        return to_numpy(h, {(py::ssize_t)B, (py::ssize_t)s.config().factors});
      })
      .def("recommend", [](Model& s, py::object items, py::object offsets, int k, py::object excl,
                           py::object excl_off, py::object cand_) {
        // cand (optional): the internal ids ranked, increasing; the exclusions and the ids
        // returned are then positions in it (1..len(cand)).
        auto it = arr<int32_t>(items, "items", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        check_sequences(it, off, s.config().n_items, "sessions");
        py::array_t<int32_t, py::array::c_style> cand;
        int n_cand = 0;
        if (!cand_.is_none()) {
          cand = arr<int32_t>(cand_, "cand", 1);
          FSR_REQUIRE(cand.shape(0) >= 1 && cand.shape(0) <= s.config().n_items,
                      "cand must hold 1..", s.config().n_items, " items, got ", cand.shape(0));
          n_cand = (int)cand.shape(0);
        }
        const int V = n_cand ? n_cand : s.config().n_items;
        auto x = arr<int32_t>(excl, "exclude", 1);
        auto xo = arr<int64_t>(excl_off, "exclude_offsets", 1);
        const int64_t B = off.shape(0) - 1;
        FSR_REQUIRE(xo.shape(0) == B + 1, "exclude_offsets must have ", B + 1, " entries, got ", xo.shape(0));
        check_sequences(x, xo, V, "exclude");
        FSR_REQUIRE(k >= 1 && k <= V, "n must be in 1..", V, ", got ", k);
        py::array_t<int32_t> ids({(py::ssize_t)B, (py::ssize_t)k});
        py::array_t<float> sc({(py::ssize_t)B, (py::ssize_t)k});
        int32_t* pi = ids.mutable_data();
        float* ps = sc.mutable_data();
        {
          py::gil_scoped_release nogil;
          s.recommend(it.data(), off.data(), B, k, x.data(), xo.data(), pi, ps,
                      n_cand ? cand.data() : nullptr, n_cand);
        }
        return py::make_tuple(ids, sc);
      }, py::arg("items"), py::arg("offsets"), py::arg("k"), py::arg("excl"), py::arg("excl_off"),
         py::arg("cand") = py::none())
      .def("recommend_resident", [](Model& s, py::object items_, py::object excl_, int k,
                                    py::object out_ids_, py::object out_scores_) {
        // Sessions and outputs in the model's memory: numpy arrays for a model on the CPU,
        // arrays with __cuda_array_interface__ (CuPy, PyTorch, Numba) on the model's GPU
        // for a model there.  Every array's type, shape, layout and memory are checked
        // here, and the engine checks the ids (1..V) where they are before using them.
        const bool device = s.device_index() >= 0;
        Resident items = resident<int32_t>(s, items_, "items", device, false);
        const int64_t B = items.shape[0];
        const int64_t L = items.shape[1];
        Resident excl;
        if (!excl_.is_none()) {
          excl = resident<int32_t>(s, excl_, "excl", device, false);
          FSR_REQUIRE(excl.shape[0] == B && excl.shape[1] >= 1, "excl must have shape (", B,
                      ", >= 1), got (", excl.shape[0], ", ", excl.shape[1], ")");
        }
        Resident ids = resident<int32_t>(s, out_ids_, "out_ids", device, true);
        Resident sc = resident<float>(s, out_scores_, "out_scores", device, true);
        FSR_REQUIRE(ids.shape[0] == B && ids.shape[1] == k && sc.shape[0] == B && sc.shape[1] == k,
                    "out_ids and out_scores must have shape (", B, ", ", k, ")");
        FSR_REQUIRE(L <= INT32_MAX && excl.shape[1] <= INT32_MAX, "sessions are too long");
        py::gil_scoped_release nogil;
        s.recommend_resident(static_cast<const int32_t*>(items.ptr), B, (int)L,
                             static_cast<const int32_t*>(excl.ptr), (int)excl.shape[1], k,
                             static_cast<int32_t*>(ids.ptr), static_cast<float*>(sc.ptr));
      }, py::arg("items"), py::arg("excl"), py::arg("k"), py::arg("out_ids"), py::arg("out_scores"))
      .def_property("scoring", &Model::scoring, &Model::set_scoring,
                    "How top-k scores: 'auto', 'fp32' (every item's exact score) or 'int8' "
                    "(an int8 screen with proven bounds, then fp32 re-scoring of the "
                    "candidates); the same ids and scores every way.")
      .def("item_embeddings", [](Model& s) {
        return to_numpy(s.item_embeddings(), {(py::ssize_t)s.config().n_items, (py::ssize_t)s.config().factors});
      }, "(V, C): items 1..V's rows of the item table (with features: E + their pooled embeddings)")
      .def("set_item_features", [](Model& s, py::object values, py::object offsets) {
        auto val = arr<int32_t>(values, "values", 1);
        auto off = arr<int64_t>(offsets, "offsets", 1);
        FSR_REQUIRE(off.shape(0) >= 1, "offsets must have at least one entry");
        FSR_REQUIRE(off.data()[off.shape(0) - 1] == val.shape(0), "offsets[-1] (",
                    off.data()[off.shape(0) - 1], ") must equal the number of values (",
                    val.shape(0), ")");
        s.set_item_features(val.data(), off.data(), off.shape(0) - 1);
      }, py::arg("values"), py::arg("offsets"),
         "Each item's feature values: values[offsets[i]:offsets[i + 1]] for the items 0..V "
         "(item 0, the padding, has none), each in 0..n_feature_values - 1; needed before "
         "a model with n_feature_values > 0 trains or scores")
      .def_property_readonly("has_item_features", &Model::has_item_features);
}

}  // namespace fsr::bind
