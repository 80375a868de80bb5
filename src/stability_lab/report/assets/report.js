/* stability-lab report: draws the page from the JSON in #lab-data as SVG and HTML.
   No library, nothing fetched: the file works offline. Every chart element that
   stands for a run carries data-run="<run id>"; hovering it shows the run's id and
   config (#tip), clicking it opens the run's detail (dialog#detail). */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("lab-data").textContent);
  var app = document.getElementById("app");
  var tip = document.getElementById("tip");
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  var DASHES = ["", "6 3", "2 3", "10 3 2 3", "1 6"];
  var VNAME = {converged: "converged", not_converged: "not converged", diverged: "diverged",
               overflow: "overflow", nan: "NaN", oscillating: "oscillating",
               stagnated: "stagnated", error: "error"};
  var redraws = [];

  function el(tag, attrs, parent, text) {
    var e = document.createElement(tag);
    for (var k in (attrs || {})) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function sv(tag, attrs, parent, text) {
    var e = document.createElementNS(NS, tag);
    for (var k in (attrs || {})) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(x, sig) {
    if (x === null || x === undefined) return "-";
    if (typeof x === "string") return x;
    if (typeof x === "boolean") return String(x);
    if (x === 0) return "0";
    var a = Math.abs(x);
    if (a >= 1e-3 && a < 1e5) return String(Number(x.toPrecision(sig || 4)));
    return x.toExponential((sig || 4) - 1).replace("e+", "e");
  }
  function val(v) { return (v === null || v === undefined) ? "-" : String(v); }
  // report/policies.py's one_policy: a group that ran one policy has none to choose
  function onePolicy(policies) {
    return "One policy ran (" + (policies.length ? policies[0].policy : "none") +
      "): no other to compare it with (--sweep policy compares them).";
  }
  function configText(run) {
    var parts = [];
    for (var k in run.config) parts.push(k + "=" + val(run.config[k]));
    return parts.join(" ");
  }

  /* ---- tooltip and detail -------------------------------------------------------- */
  function showTip(ev, runId, extra) {
    var r = D.runs[runId];
    if (!r) return;
    tip.innerHTML = "";
    el("b", {}, tip, r.label);
    el("div", {}, tip, "run " + r.id);
    el("div", {}, tip, configText(r));
    el("div", {}, tip, r.verdict_text);
    if (extra) el("div", {}, tip, extra);
    tip.hidden = false;
    moveTip(ev);
  }
  function moveTip(ev) {
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var x = Math.min(ev.clientX + 12, window.innerWidth - w - 4);
    var y = ev.clientY + 14;
    if (y + h > window.innerHeight - 4) y = Math.max(4, ev.clientY - h - 10);
    tip.style.left = Math.max(4, x) + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { tip.hidden = true; }
  function bindRun(node, runId, extra) {
    node.setAttribute("data-run", runId);
    node.addEventListener("mouseenter", function (ev) { showTip(ev, runId, extra); });
    node.addEventListener("mousemove", moveTip);
    node.addEventListener("mouseleave", hideTip);
    node.addEventListener("click", function () { hideTip(); openRun(runId); });
  }

  /* ---- scales and charts ------------------------------------------------------------ */
  function extent(values, log) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) {
      if (v === null || !isFinite(v) || (log && v <= 0)) return;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    });
    if (lo === Infinity) return null;
    if (lo === hi) { if (log) { lo /= 2; hi *= 2; } else { lo -= 1; hi += 1; } }
    return [lo, hi];
  }
  function ticksLinear(lo, hi, n) {
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + 1e-9 * step; t += step) out.push(t);
    return out;
  }
  function ticksLog(lo, hi) {
    var a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    var every = Math.max(1, Math.ceil((b - a) / 6)), out = [];
    for (var p = a; p <= b; p += every) {
      var t = Math.pow(10, p);
      if (t >= lo * 0.999 && t <= hi * 1.001) out.push(t);
    }
    if (out.length < 2) return ticksLinear(lo, hi, 4).filter(function (t) { return t > 0; });
    return out;
  }
  function widthOf(box) { return Math.max(240, Math.min(box.clientWidth || 360, 1180)); }

  /* series: [{run, color, dash, y:[...], x:[...]?, onset}] */
  function lineChart(box, opt) {
    function draw() {
      box.innerHTML = "";
      if (opt.title) el("div", {"class": "t"}, box, opt.title);
      var W = widthOf(box), H = opt.height || 230;
      var m = {l: 52, r: 10, t: 8, b: 34};
      var svg = sv("svg", {viewBox: "0 0 " + W + " " + H, width: W, height: H,
                           role: "img", "aria-label": opt.title || "chart"}, box);
      var xs = [], ys = [];
      opt.series.forEach(function (s) {
        // x spans every step, finite or not: a run that overflowed at step 2 of 200
        // still shows where in the run that was
        s.y.forEach(function (v, i) { ys.push(v); xs.push(s.x ? s.x[i] : i + 1); });
      });
      var log = opt.log && extent(ys, true) !== null;
      if (opt.xmax) xs.push(1, opt.xmax);
      var ye = extent(ys, log), xe = extent(xs, false);
      if (!ye || !xe) {
        sv("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, svg, "no finite values");
        return;
      }
      if (!opt.log && ye[0] > 0 && opt.zero) ye[0] = 0;
      function X(v) { return m.l + (v - xe[0]) / (xe[1] - xe[0]) * (W - m.l - m.r); }
      function Y(v) {
        var f = log ? (Math.log(v) - Math.log(ye[0])) / (Math.log(ye[1]) - Math.log(ye[0]))
                    : (v - ye[0]) / (ye[1] - ye[0]);
        return H - m.b - f * (H - m.t - m.b);
      }
      var ax = sv("g", {"class": "axis"}, svg);
      sv("line", {x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b}, ax);
      sv("line", {x1: m.l, x2: m.l, y1: m.t, y2: H - m.b}, ax);
      (log ? ticksLog(ye[0], ye[1]) : ticksLinear(ye[0], ye[1], 4)).forEach(function (t) {
        sv("line", {x1: m.l - 4, x2: m.l, y1: Y(t), y2: Y(t)}, ax);
        sv("text", {x: m.l - 6, y: Y(t) + 4, "text-anchor": "end"}, ax, fmt(t, 2));
      });
      ticksLinear(xe[0], xe[1], Math.max(2, Math.floor(W / 90))).forEach(function (t) {
        sv("line", {x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4}, ax);
        sv("text", {x: X(t), y: H - m.b + 16, "text-anchor": "middle"}, ax, fmt(t, 3));
      });
      if (opt.xlabel) sv("text", {x: (m.l + W - m.r) / 2, y: H - 3, "text-anchor": "middle"},
                         ax, opt.xlabel);
      if (opt.ylabel) sv("text", {x: 12, y: m.t + 2, "text-anchor": "start",
                                  "dominant-baseline": "hanging"}, ax, "");
      var plot = sv("g", {}, svg);
      opt.series.forEach(function (s) {
        var d = "", pen = false, last = null;
        s.y.forEach(function (v, i) {
          var x = s.x ? s.x[i] : i + 1;
          if (v === null || !isFinite(v) || (log && v <= 0)) { pen = false; return; }
          d += (pen ? "L" : "M") + X(x).toFixed(1) + " " + Y(v).toFixed(1);
          pen = true;
          last = [X(x), Y(v)];
        });
        var g = sv("g", {"class": "run"}, plot);
        if (d && d.indexOf("L") < 0) {  // a single finite point: a dot
          var dot = sv("circle", {cx: last[0], cy: last[1], r: 3.5, fill: s.color,
                                  "class": "curve dot"}, g);
          bindRun(dot, s.run, s.extra);
        } else if (d) {
          sv("path", {d: d, "class": "curve", stroke: s.color,
                      "stroke-dasharray": s.dash || null}, g);
          var hit = sv("path", {d: d, "class": "hit"}, g);
          bindRun(hit, s.run, s.extra);
          hit.addEventListener("mouseenter", function () {
            plot.classList.add("hl"); g.querySelector(".curve").classList.add("on");
          });
          hit.addEventListener("mouseleave", function () {
            plot.classList.remove("hl"); g.querySelector(".curve").classList.remove("on");
          });
        }
        if (s.onset && last) {
          var k = s.onset - 1, ov = s.y[k];
          var px = X(s.x ? s.x[k] : s.onset), py;
          py = (ov !== null && isFinite(ov) && !(log && ov <= 0)) ? Y(ov) : last[1];
          var mk = sv("path", {d: "M" + (px - 4) + " " + (py - 4) + "l8 8m0 -8l-8 8",
                               stroke: s.color, "stroke-width": 2.2, "class": "onset"}, g);
          bindRun(mk, s.run, "onset " + s.onset);
        }
      });
    }
    draw();
    redraws.push(draw);
  }

  function barChart(box, opt) {
    function draw() {
      box.innerHTML = "";
      if (opt.title) el("div", {"class": "t"}, box, opt.title);
      var W = widthOf(box), n = opt.bars.length, H = 60 + 22 * n;
      var m = {l: Math.min(150, W * 0.35), r: 40, t: 6, b: 30};
      var svg = sv("svg", {viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
                           "aria-label": opt.title}, box);
      var hi = Math.max(opt.max || 0, Math.max.apply(null, opt.bars.map(function (b) {
        return b.value || 0; })));
      function X(v) { return m.l + v / hi * (W - m.l - m.r); }
      var ax = sv("g", {"class": "axis"}, svg);
      ticksLinear(0, hi, 4).forEach(function (t) {
        sv("line", {x1: X(t), x2: X(t), y1: m.t, y2: H - m.b, stroke: "#eee"}, ax);
        sv("text", {x: X(t), y: H - m.b + 14, "text-anchor": "middle"}, ax, fmt(t, 3));
      });
      sv("text", {x: (m.l + W - m.r) / 2, y: H - 3, "text-anchor": "middle"}, ax,
         opt.xlabel || "");
      opt.bars.forEach(function (b, i) {
        var y = m.t + 6 + i * 22;
        sv("text", {x: m.l - 6, y: y + 13, "text-anchor": "end"}, svg, b.label);
        var r = sv("rect", {x: m.l, y: y, height: 16, width: Math.max(1, X(b.value || 0) - m.l),
                            fill: b.color, "class": "bar"}, svg);
        bindRun(r, b.run, fmt(b.value, 3) + " " + (opt.unit || ""));
        sv("text", {x: X(b.value || 0) + 4, y: y + 13}, svg, fmt(b.value, 3));
      });
    }
    draw();
    redraws.push(draw);
  }

  /* rows: names; cols: steps; z[row][col]; colour from low (red) to high (blue) */
  function heatmap(box, opt) {
    function draw() {
      box.innerHTML = "";
      if (opt.title) el("div", {"class": "t"}, box, opt.title);
      var W = widthOf(box), nr = opt.rows.length, nc = opt.cols.length;
      var m = {l: Math.min(130, W * 0.34), r: 8, t: 4, b: 30};
      var ch = 16, H = m.t + m.b + ch * nr;
      var svg = sv("svg", {viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
                           "aria-label": opt.title}, box);
      var cw = (W - m.l - m.r) / Math.max(nc, 1);
      var flat = [];
      opt.z.forEach(function (row) { row.forEach(function (v) { if (v !== null) flat.push(v); }); });
      var lo = flat.length ? Math.min.apply(null, flat) : 0;
      var hi = flat.length ? Math.max.apply(null, flat) : 1;
      function colour(v) {
        if (v === null || v === undefined) return "#ddd";
        var f = Math.max(0, Math.min(1, (v - lo) / ((hi - lo) || 1)));
        var r = Math.round(215 - 170 * f), g = Math.round(48 + 110 * f), b = Math.round(39 + 170 * f);
        return "rgb(" + r + "," + g + "," + b + ")";
      }
      opt.rows.forEach(function (name, i) {
        sv("text", {x: m.l - 4, y: m.t + ch * i + 12, "text-anchor": "end"}, svg, name);
        opt.cols.forEach(function (step, j) {
          var v = opt.z[i][j];
          var c = sv("rect", {x: m.l + j * cw, y: m.t + ch * i, width: Math.max(cw, 0.5),
                              height: ch - 1, fill: colour(v), "class": "hm"}, svg);
          bindRun(c, opt.run, name + ", " + opt.unit + " " + step + ": " + opt.what + " " +
                  (v === null ? "not measured" : fmt(v, 3)));
        });
      });
      var ax = sv("g", {"class": "axis"}, svg);
      var every = Math.max(1, Math.ceil(nc / Math.max(2, Math.floor((W - m.l) / 50))));
      opt.cols.forEach(function (step, j) {
        if (j % every) return;
        sv("text", {x: m.l + (j + 0.5) * cw, y: H - m.b + 13, "text-anchor": "middle"}, ax, step);
      });
      sv("text", {x: (m.l + W) / 2, y: H - 3, "text-anchor": "middle"}, ax, opt.unit);
      el("div", {"class": "note"}, box, "colour: " + opt.what + ", red " + fmt(lo, 2) +
         " to blue " + fmt(hi, 2) + "; grey: not measured");
    }
    draw();
    redraws.push(draw);
  }

  /* ---- sections ------------------------------------------------------------------- */
  function section(title, id) {
    var s = el("section", {id: id}, app);
    el("h2", {}, s, title);
    return s;
  }
  function table(parent, headers, rows, runs) {
    var t = el("table", {}, parent);
    var tr = el("tr", {}, el("thead", {}, t));
    headers.forEach(function (h) { el("th", {}, tr, h); });
    var tb = el("tbody", {}, t);
    rows.forEach(function (r, i) {
      var row = el("tr", {}, tb);
      r.forEach(function (c) { el("td", {}, row, c); });
      if (runs && runs[i]) bindRun(row, runs[i]);
    });
    return t;
  }

  function header() {
    var s = el("section", {id: "answer", "class": "answer"}, app);
    D.header.forEach(function (line, i) {
      var p = el("p", {"class": i === 0 ? "q" : ""}, s, line);
    });
    if (D.condition) el("p", {}, s, D.condition);
    var rec = D.recommendation;
    el("p", {"class": "q"}, s, rec[0]);
    if (rec.length > 1) {
      var ul = el("ul", {"class": "recs"}, s);
      rec.slice(1).forEach(function (line) { el("li", {}, ul, line.replace(/^\s*-\s*/, "")); });
    }
  }

  function mapSection() {
    var M = D.map;
    if (!M) return;
    var s = section("Stability map" + (M.y ? " (" + M.y + " \u00d7 " + M.x + ")" : " (" + M.x + ")"),
                    "map");
    var legend = el("div", {"class": "legend"}, s);
    var seen = {};
    M.panels.forEach(function (p) { p.cells.forEach(function (row) { row.forEach(function (c) {
      if (c) seen[c.verdict] = true; }); }); });
    Object.keys(M.legend).forEach(function (v) {
      if (!seen[v]) return;
      var it = el("span", {}, legend);
      el("span", {"class": "b v-" + v}, it);
      it.appendChild(document.createTextNode(M.legend[v] + " " + VNAME[v]));
    });
    el("span", {}, legend, M.step_unit === "solve" ? "number: correct digits"
                                                    : "number: onset " + M.step_unit);
    el("span", {}, legend, "outline / mark: verified re-run + fixed, ^ improved, x not fixed");
    if (M.x === "lr") el("span", {}, legend, "blue bar: 2/L (lr at or below it on its left)");
    var wrap = el("div", {"class": "maps"}, s);
    M.panels.forEach(function (p) {
      var box = el("div", {"class": "panel"}, wrap);
      var title = p.title;
      var bounds = p.bounds.filter(function (b) { return b; });
      if (bounds.length) {
        var lo = Math.min.apply(null, bounds.map(function (b) { return b.lr_bound; }));
        var hi = Math.max.apply(null, bounds.map(function (b) { return b.lr_bound; }));
        title += "  2/L = " + fmt(lo, 2) + (hi > lo * 1.05 ? ".." + fmt(hi, 2) : "");
      }
      if (M.panels.length > 1 || bounds.length) el("h3", {}, box, title);
      if (!M.y) {  // one swept axis: a strip of cells that wraps on narrow screens
        var strip = el("div", {"class": "strip"}, box);
        p.cells[0].forEach(function (c, xi) {
          var item = el("div", {"class": "item"}, strip);
          el("div", {"class": "xv"}, item, val(M.x_values[xi]));
          cellNode(el("div", {}, item), c, null, xi);
        });
        return;
      }
      var t = el("table", {"class": "map", style: "max-width:" +
                           (4.2 * (M.x_values.length + 2)) + "em"}, box);
      var hr = el("tr", {}, t);
      el("th", {"class": "rowh"}, hr, M.y ? M.y + " \\ " + M.x : M.x);
      M.x_values.forEach(function (v) { el("th", {}, hr, val(v)); });
      p.cells.forEach(function (row, yi) {
        var tr = el("tr", {}, t);
        el("th", {"class": "rowh"}, tr, M.y ? val(M.y_values[yi]) : "");
        var b = p.bounds[yi];
        row.forEach(function (c, xi) { cellNode(el("td", {}, tr), c, b, xi); });
        if (b && b.columns_at_or_below === row.length) {
          el("td", {"class": "bound", style: "min-width:0;width:3px;padding:0"}, tr);
        }
      });
    });
  }

  /* one map cell: verdict colour, letter and onset, verification mark, 2/L bar */
  function cellNode(node, c, b, xi) {
    var cls = "cell" + (c ? " v-" + c.verdict : "");
    if (c && c.outcome) cls += " o-" + c.outcome.replace(" ", "");
    if (b && b.columns_at_or_below === xi) cls += " bound";
    node.setAttribute("class", cls);
    if (!c) { node.textContent = "."; return; }
    var mark = c.outcome ? D.map.outcome_marks[c.outcome] : "";
    node.textContent = c.text.slice(0, c.text.length - mark.length);
    if (mark) el("span", {"class": "mark"}, node, mark);
    var extra = c.verification.length ? "verified: " + c.verification.map(function (v) {
      return v.mitigation + " \u2192 " + v.outcome; }).join(", ") : "";
    bindRun(node, c.run_id, extra);
  }

  function keyOf(run, axes) {
    return axes.map(function (a) { return a + "=" + val(run.config[a]); }).join(" ");
  }

  function curvesSection() {
    if (D.solves) return;
    var C = D.curves, runs = D.order.map(function (id) { return D.runs[id]; })
      .filter(function (r) { return r.metrics.loss && r.metrics.loss.length; });
    if (!runs.length) return;
    var colours = {}, dashes = {};
    runs.forEach(function (r) {
      var c = C.colour ? val(r.config[C.colour]) : "";
      if (!(c in colours)) colours[c] = PALETTE[Object.keys(colours).length % PALETTE.length];
      var d = keyOf(r, C.dash);
      if (!(d in dashes)) dashes[d] = DASHES[Object.keys(dashes).length % DASHES.length];
    });
    var groups = {}, order = [];
    runs.forEach(function (r) {
      var k = keyOf(r, C.panel_axes) || "all runs";
      if (!(k in groups)) { groups[k] = []; order.push(k); }
      groups[k].push(r);
    });
    [["loss", "Loss"], ["grad_norm", "Gradient norm"]].forEach(function (mt) {
      if (!runs.some(function (r) { return r.metrics[mt[0]]; })) return;
      var s = section(mt[1] + " per " + runs[0].step_unit, "curves-" + mt[0]);
      var keys = el("div", {"class": "keys"}, s);
      if (C.colour) Object.keys(colours).forEach(function (c) {
        var k = el("span", {}, keys);
        el("span", {"class": "sw", style: "border-color:" + colours[c]}, k);
        k.appendChild(document.createTextNode(C.colour + "=" + c));
      });
      if (C.dash.length && Object.keys(dashes).length > 1) Object.keys(dashes).forEach(function (d) {
        var k = el("span", {}, keys);
        var w = sv("svg", {width: 26, height: 8}, k);
        sv("line", {x1: 0, x2: 26, y1: 4, y2: 4, stroke: "#333", "stroke-width": 2,
                    "stroke-dasharray": dashes[d] || null}, w);
        k.appendChild(document.createTextNode(" " + d));
      });
      el("span", {}, keys, "\u00d7 = onset of a failure");
      var grid = el("div", {"class": "grid"}, s);
      // one x range for every panel: the longest run (a run stops where it failed)
      var xmax = Math.max.apply(null, runs.map(function (r) {
        return (r.metrics[mt[0]] || []).length; }));
      order.forEach(function (k) {
        var box = el("div", {"class": "chart"}, grid);
        lineChart(box, {
          title: k, log: true, xlabel: runs[0].step_unit, ylabel: mt[0], xmax: xmax,
          series: groups[k].filter(function (r) { return r.metrics[mt[0]]; }).map(function (r) {
            return {run: r.id, y: r.metrics[mt[0]], onset: r.failed ? r.onset : null,
                    color: colours[C.colour ? val(r.config[C.colour]) : ""],
                    dash: dashes[keyOf(r, C.dash)]};
          })
        });
      });
    });
  }

  function solverSection() {
    var runs = D.order.map(function (id) { return D.runs[id]; });
    if (!D.solves || !runs.some(function (r) { return r.digits !== null && r.digits !== undefined; }))
      return;
    var s = section("Correct digits per solver", "digits");
    el("p", {"class": "note"}, s, "Digits of the solution that agree with the certified or " +
       "extended-precision reference (higher is better); colour: verdict.");
    var other = D.axes.filter(function (a) { return a !== "solver"; });
    var groups = {}, order = [];
    runs.forEach(function (r) {
      var k = keyOf(r, other) || "all runs";
      if (!(k in groups)) { groups[k] = []; order.push(k); }
      groups[k].push(r);
    });
    var grid = el("div", {"class": "grid"}, s);
    order.forEach(function (k) {
      barChart(el("div", {"class": "chart"}, grid), {
        title: k, xlabel: "correct digits", unit: "digits", max: 16,
        bars: groups[k].map(function (r) {
          return {run: r.id, label: r.config.solver !== undefined ? val(r.config.solver) : r.label,
                  value: r.digits, color: r.failed ? "#d93025" :
                    (r.verdict === "converged" ? "#1e8e3e" : "#f9ab00")};
        })
      });
    });
  }

  function policySection() {
    var P = D.policy;
    if (!P || !P.groups) return;
    var s = section("Policy evaluation", "policy");
    var tol = P.tolerance;
    el("p", {"class": "note"}, s, "Within tolerance: accuracy within " +
       (tol.accuracy_drop * 100) + " pt and final loss within " + (tol.loss_rtol * 100) +
       "% + " + tol.loss_atol + " of the reference, run not failed; cost: relative cost " +
       "of the policy on the hardware it targets.");
    P.groups.forEach(function (g) {
      el("h3", {}, s, g.label + " (reference: " + (g.reference || "none") + ")");
      var runs = g.policies.map(function (p) { return p.run; });
      table(s, ["policy", "run", "verdict", "final loss", "\u0394loss", "accuracy",
                "\u0394acc (pt)", "skipped", "underflow", "headroom (2^)", "step ms", "cost",
                "within tolerance"],
            g.policies.map(function (p) {
              return [p.policy, p.run, (VNAME[p.verdict] || p.verdict), fmt(p.final_loss),
                      fmt(p.loss_gap, 3), p.accuracy === null ? "-" : (p.accuracy * 100).toFixed(1) + "%",
                      p.accuracy_gap === null || p.accuracy_gap === undefined ? "-" :
                        (p.accuracy_gap * 100).toFixed(1),
                      val(p.skipped_steps), p.grad_underflow_frac === null ||
                        p.grad_underflow_frac === undefined ? "-" :
                        (p.grad_underflow_frac * 100).toFixed(2) + "%",
                      fmt(p.min_headroom_log2, 3), fmt(p.step_time_ms, 3), val(p.cost),
                      p.within_tolerance ? "yes" : "no"];
            }), runs);
      var single = g.policies.length < 2;
      el("p", {"class": "conclusion"}, s, single ? onePolicy(g.policies) :
         g.cheapest_within_tolerance ?
         "Cheapest policy within tolerance: " + g.cheapest_within_tolerance :
         "No policy stayed within tolerance of the reference.");
      var rej = single ? [] : Object.keys(g.rejected || {});
      if (rej.length) {
        var ul = el("ul", {}, s);
        rej.forEach(function (k) { el("li", {}, ul, "rejected " + k + ": " + g.rejected[k]); });
      }
      g.policies.forEach(function (p) {
        if (p.first_nonfinite) el("p", {}, s, p.policy + ": first non-finite value created by " +
          p.first_nonfinite.module + " (" + p.first_nonfinite.pass + " pass, step " +
          p.first_nonfinite.step + "): " + p.first_nonfinite.detail);
      });
    });
  }

  var HM_STATS = [["act_headroom", "activation headroom (powers of 2)"],
                  ["grad_headroom", "gradient headroom (powers of 2)"],
                  ["update_ratio", "update / weight"], ["dead_frac", "dead unit fraction"]];

  function attributionHeatmap(box, r, stat) {
    var A = r.attribution, S = A && A.series;
    if (!S || !S.steps) return false;
    var mods = (A.order || Object.keys(A.modules || {})).filter(function (m) {
      return S[m] && S[m][stat[0]]; });
    if (!mods.length) return false;
    heatmap(box, {title: r.label + " (" + r.id + ")", rows: mods, cols: S.steps, run: r.id,
                  unit: r.step_unit, what: stat[1],
                  z: mods.map(function (m) { return S[m][stat[0]]; })});
    return true;
  }

  function attributionSection() {
    var runs = D.order.map(function (id) { return D.runs[id]; })
      .filter(function (r) { return r.attribution && r.attribution.series; });
    if (!runs.length) {
      if (D.policy && D.policy.groups) {  // a deep net run without per-layer statistics
        var n = section("Attribution", "attribution");
        el("p", {}, n, "No per-layer statistics in this sweep: run it with --attribute K " +
           "(every K steps) for the module \u00d7 step heatmap.");
      }
      return;
    }
    var s = section("Attribution: module \u00d7 " + runs[0].step_unit, "attribution");
    el("p", {"class": "note"}, s, "Per module and attribution step; red is little headroom " +
       "left before overflow. Creators of non-finite values are named in the policy " +
       "evaluation and in each run's detail.");
    var pick = el("select", {"aria-label": "statistic"}, s);
    HM_STATS.forEach(function (st, i) { el("option", {value: i}, pick, st[1]); });
    var grid = el("div", {"class": "grid"}, s), mine = [];
    function draw() {
      // this section's old charts leave the resize list before the new ones join it
      redraws = redraws.filter(function (f) { return mine.indexOf(f) < 0; });
      grid.innerHTML = "";
      var before = redraws.length;
      runs.forEach(function (r) {
        var box = el("div", {"class": "chart"}, grid);
        if (!attributionHeatmap(box, r, HM_STATS[+pick.value])) grid.removeChild(box);
      });
      mine = redraws.slice(before);
    }
    draw();
    pick.addEventListener("change", draw);
  }

  function verificationSection() {
    var s = section("Verification", "verification");
    var rows = D.verification;
    if (!rows.length) {
      el("p", {}, s, "Not verified: re-run with --verify to re-run every failing run with " +
         "each recommended fix alone and all together, same seed.");
      return;
    }
    var plan = D.verification_plan;
    if (plan) el("p", {"class": "note"}, s, plan.exhaustive ?
      "Every one of " + plan.failing_runs + " failing run(s) verified (same seed and data order)." :
      plan.failing_runs + " failing run(s) in " + plan.groups + " group(s); one representative " +
      "per group verified.");
    table(s, ["mitigation", "re-runs", "fixed", "improved", "not fixed"],
          D.verification_summary.map(function (x) {
            return [x.mitigation, x.runs, x.fixed, x.improved, x["not fixed"]].map(String); }));
    var holder = s;
    if (rows.length > 40) {
      holder = el("details", {}, s);
      el("summary", {}, holder, "every re-run (" + rows.length + ")");
    }
    table(holder, ["run", "mitigation", "change", "before", "after", "digits", "outcome"],
          rows.map(function (x) {
            var ch = Object.keys(x.delta || {}).map(function (k) {
              return k + "=" + val(x.delta[k]); }).join(", ");
            return [(D.runs[x.run_id] ? D.runs[x.run_id].label : x.label) + " (" + x.run_id + ")",
                    x.mitigation, ch, VNAME[x.before.verdict] || x.before.verdict,
                    (VNAME[x.after.verdict] || x.after.verdict) + " (" + x.fixed_run_id + ")",
                    fmt(x.before.digits, 3) + " \u2192 " + fmt(x.after.digits, 3),
                    x.outcome || (x.fixed ? "fixed" : "not fixed")];
          }), rows.map(function (x) { return x.run_id; }));
  }

  function runTable() {
    var s = section("Runs (" + D.n_runs + ")", "runs");
    var runs = D.order.map(function (id) { return D.runs[id]; });
    table(s, ["run", "config", "verdict", "onset", D.solves ? "digits" : "final loss",
              "findings"],
          runs.map(function (r) {
            var sigs = {};
            r.findings.forEach(function (f) { sigs[f.signature] = 1; });
            return [r.id, r.label, VNAME[r.verdict] || r.verdict, val(r.onset),
                    D.solves ? fmt(r.digits, 3) : fmt(r.final_loss),
                    Object.keys(sigs).join(", ") || "-"];
          }), D.order);
  }

  /* ---- run detail --------------------------------------------------------------------- */
  var dialog = document.getElementById("detail");
  document.getElementById("dclose").addEventListener("click", function () { closeRun(); });
  var detailDraws = [];
  function closeRun() {
    if (dialog.open) dialog.close();
  }
  dialog.addEventListener("close", function () {
    redraws = redraws.filter(function (f) { return detailDraws.indexOf(f) < 0; });
    detailDraws = [];
  });
  function openRun(id) {
    var r = D.runs[id];
    if (!r) return;
    var body = document.getElementById("dbody");
    body.innerHTML = "";
    document.getElementById("dtitle").textContent = r.label + " \u2014 run " + r.id;
    if (!dialog.open) dialog.showModal();
    var before = redraws.length;
    el("p", {"class": r.failed ? "bad" : (r.verdict === "converged" ? "ok" : "")}, body,
       "Verdict: " + r.verdict_text);
    el("p", {}, body, "Config: " + Object.keys(r.spec).map(function (k) {
      var v = r.spec[k];
      return k + "=" + (typeof v === "object" ? JSON.stringify(v) : val(v)); }).join(" "));
    el("p", {"class": "note"}, body, "stability-lab show " + r.id + " prints this run's trace.");
    if (r.error) el("p", {"class": "bad"}, body, "Error: " + r.error);
    el("h3", {}, body, "Findings");
    if (r.findings.length) {
      var ul = el("ul", {}, body);
      r.findings.forEach(function (f) {
        el("li", {}, ul, f.signature + (f.onset ? " at " + r.step_unit + " " + f.onset : "") +
           (f.location ? " in " + f.location : "") + " [" + f.severity + "]: " + f.message);
      });
    } else el("p", {}, body, "none");
    el("h3", {}, body, "Phases");
    if (r.phases.length) {
      table(body, ["phase", "from", "to"], r.phases.map(function (p) {
        return [p.name, val(p.start), val(p.end)]; }));
    } else el("p", {}, body, "none");
    if (r.verification.length) {
      el("h3", {}, body, "Verification");
      table(body, ["mitigation", "after", "outcome"], r.verification.map(function (x) {
        return [x.mitigation, (VNAME[x.after.verdict] || x.after.verdict) + " (run " +
                x.fixed_run_id + ")", x.outcome || (x.fixed ? "fixed" : "not fixed")]; }));
    }
    var names = Object.keys(r.metrics).filter(function (k) { return r.metrics[k].length > 1; });
    if (names.length) {
      el("h3", {}, body, "Trace");
      var grid = el("div", {"class": "grid"}, body);
      names.forEach(function (k) {
        var ys = r.metrics[k];
        var pos = ys.filter(function (v) { return v !== null && v > 0; }).length;
        var neg = ys.some(function (v) { return v !== null && v < 0; });
        lineChart(el("div", {"class": "chart"}, grid), {
          title: k, log: !neg && pos > 1 && /loss|norm|ratio|logit|scale/.test(k), height: 170,
          xlabel: r.step_unit, series: [{run: r.id, y: ys, color: "#1f77b4",
                                         onset: r.failed ? r.onset : null}]});
      });
    }
    var A = r.attribution;
    if (A && A.modules && Object.keys(A.modules).length) {
      el("h3", {}, body, "Attribution");
      if (A.first_creator) el("p", {"class": "bad"}, body, "First non-finite value created by " +
        A.first_creator.module + " (" + A.first_creator.pass + " pass, step " +
        A.first_creator.step + "): " + A.first_creator.detail);
      var hm = el("div", {"class": "chart"}, body);
      attributionHeatmap(hm, r, HM_STATS[0]);
      var mods = Object.keys(A.modules);
      table(body, ["module", "type", "act max", "act headroom", "grad max", "grad headroom",
                   "grad flush", "upd/w"], mods.map(function (m) {
        var x = A.modules[m];
        return [m, val(x.type), fmt(x.act_absmax_max, 3), fmt(x.act_headroom_min, 3),
                fmt(x.grad_absmax_max, 3), fmt(x.grad_headroom_min, 3),
                fmt(x.grad_flush_max, 3), fmt(x.update_ratio_median, 3)]; }));
    }
    detailDraws = redraws.slice(before);
  }

  /* ---- page ---------------------------------------------------------------------------- */
  header();
  mapSection();
  curvesSection();
  solverSection();
  policySection();
  attributionSection();
  verificationSection();
  runTable();
  var lastW = window.innerWidth, timer = null;
  window.addEventListener("resize", function () {
    if (window.innerWidth === lastW) return;
    lastW = window.innerWidth;
    clearTimeout(timer);
    timer = setTimeout(function () { redraws.forEach(function (f) { f(); }); }, 120);
  });
  window.labReport = {data: D, openRun: openRun, closeRun: closeRun};
})();
