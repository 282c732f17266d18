// The report's capacity planner: the steps of `turnout-bench plan`
// (loadtest/src/map/plan.rs) on the model embedded in the page. A test
// holds the two to the same answers.
(function () {
  "use strict";
  const M = JSON.parse(document.getElementById("plan-model").textContent);
  const OPS = {
    delivery: (l) => l.deliveries, publish: (l) => l.publishes, fanout: (l) => l.fanouts,
    hop: (l) => l.hops, join: (l) => l.joins, connection: (l) => l.connections,
    node: (l) => l.nodes, room: (l) => l.rooms,
  };
  const fitOf = (s, t) => M.fits.find((f) => f.strategy === s && f.target === t);
  const evalFit = (s, t, l) => {
    const f = fitOf(s, t);
    if (!f) return 0;
    let v = 0;
    for (const op of Object.keys(f.costs)) v += f.costs[op] * (OPS[op] ? OPS[op](l) : 0);
    return v;
  };
  const cost = (s, t, op) => { const f = fitOf(s, t); return f && op in f.costs ? f.costs[op] : 0; };

  // As plan.rs's short and count: rounded half away from zero.
  function short(v) {
    const a = Math.abs(v);
    if (a > 0 && a < 0.001) return v.toExponential(1);
    const places = a >= 1000 ? 0 : a >= 10 ? 1 : a >= 0.1 ? 2 : 3;
    const f = Math.pow(10, places);
    const s = (Math.sign(v) * Math.round(Math.abs(v) * f) / f).toFixed(places);
    return s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s;
  }
  function count(v) {
    const d = Math.round(Math.abs(v)).toFixed(0);
    let out = "";
    for (let i = 0; i < d.length; i++) {
      if (i > 0 && (d.length - i) % 3 === 0) out += ",";
      out += d[i];
    }
    return v < 0 && d !== "0" ? "-" + out : out;
  }

  function localShare(m, n) {
    if (m <= 0 || n <= 0) return 1;
    return (1 + (m - 1) / n) / m;
  }

  function workload(s, nodes, roomSize, a) {
    const n = nodes, m = roomSize;
    const members = Math.max(a.connections_per_node * n, m);
    const rooms = Math.max(members / m, 1);
    const publishes = rooms * a.messages_per_member_per_sec;
    const spread = s === "sticky" ? 1 : n * (1 - Math.pow(1 - 1 / n, m));
    const deliveries = publishes * m;
    return {
      deliveries: s === "local" ? deliveries * localShare(m, n) : deliveries,
      publishes,
      fanouts: s === "pubsub" ? publishes * spread : 0,
      hops: s === "relay" ? publishes * (1 - 1 / n) * (1 + spread) : 0,
      joins: members / a.rejoin_every_s,
      connections: members,
      nodes: n,
      rooms,
    };
  }

  function redisCores(s, l) {
    const commands = evalFit(s, "redis_commands", l);
    const c = M.redis_curves[s];
    if (c) {
      let own = 0;
      if (commands > 0) {
        const x = Math.min(commands, c.max_commands);
        own = c.scale * Math.pow(x, c.commands_exp) * (commands / x);
      }
      return own + c.fanout_cores * l.fanouts + (c.join_cores || 0) * l.joins + c.node_cores * l.nodes;
    }
    const per = M.redis_commands_per_core_second[s];
    if (per > 0) return commands / per + l.fanouts * cost(s, "redis_cpu", "fanout") / 1e6;
    return evalFit(s, "redis_cpu", l) / 1e6;
  }

  function predict(s, nodes, roomSize, a) {
    const l = workload(s, nodes, roomSize, a);
    const n = nodes, m = roomSize;
    const nodeCpu = evalFit(s, "ws_node_cpu", l) / 1e6;
    const redis = redisCores(s, l);
    const control = evalFit(s, "control_cpu", l) / 1e6;
    const even = l.rooms / n;
    const busiestRooms = Math.min(Math.max(Math.min(Math.floor(1.25 * even), Math.ceil(even + 3 * Math.sqrt(even))), Math.ceil(even), 1), l.rooms);
    let busiest;
    if (s === "sticky") {
      const fixed = cost(s, "ws_node_cpu", "node") / 1e6;
      busiest = fixed + Math.max(nodeCpu - fixed * n, 0) * busiestRooms / l.rooms;
    } else if (s === "relay" && l.rooms < n) {
      const owner = l.publishes * cost(s, "ws_node_cpu", "publish") + 0.5 * l.hops * cost(s, "ws_node_cpu", "hop");
      busiest = nodeCpu / n + owner / l.rooms / 1e6;
    } else {
      busiest = nodeCpu / n;
    }
    return {
      nodes, deliveries: l.deliveries, nodeCpu, busiest, redis, control,
      busiestConns: s === "sticky" ? busiestRooms * m : l.connections / n,
      rooms: l.rooms,
      fits: s !== "sticky" || m <= a.node_max_connections,
      cpuUs: l.deliveries > 0 ? (nodeCpu + redis + control) * 1e6 / l.deliveries : 0,
      redisCommands: evalFit(s, "redis_commands", l),
      redisBytes: evalFit(s, "redis_bytes", l),
      crossBytes: (l.fanouts + l.hops) * (a.payload_bytes + 120),
      undelivered: s === "local" ? 1 - localShare(m, n) : 0,
    };
  }

  function at(s, w, nodes, base) {
    const a = Object.assign({}, base, {
      connections_per_node: w.connections / nodes,
      messages_per_member_per_sec: w.messages_per_member,
    });
    return predict(s, nodes, w.room_size, a);
  }

  function shortOf(p, w, a) {
    const perNode = p.busiestConns;
    if (!p.fits) return `a room of ${count(w.room_size)} members is more than one node's max_connections (${count(a.node_max_connections)})`;
    if (perNode > a.node_max_connections) return `${count(perNode)} connections on the busiest node, more than max_connections (${count(a.node_max_connections)})`;
    if (p.busiest > M.node_utilisation * w.node_cores) {
      return `its busiest node needs ${short(p.busiest)} cores of ${short(w.node_cores)} (sized to ${(100 * M.node_utilisation).toFixed(0)} %)`;
    }
    return null;
  }

  function outside(m, w, p, shards) {
    const v = [], n = p.nodes, size = w.room_size, rate = w.messages_per_member;
    if (size < m.room_size[0] || size > m.room_size[1]) {
      v.push(`rooms of ${count(size)}, outside the ${count(m.room_size[0])} to ${count(m.room_size[1])} members measured`);
    }
    if (rate < 0.5 * m.messages_per_member[0] || rate > 1.5 * m.messages_per_member[1]) {
      v.push(`${short(rate)} msg/s per member, outside the ${short(m.messages_per_member[0])} to ${short(m.messages_per_member[1])} measured`);
    }
    if (n > m.nodes) v.push(`${count(n)} nodes, beyond the ${count(m.nodes)} measured`);
    const conns = w.connections / n;
    if (conns > 1.5 * m.connections_per_node) v.push(`${count(conns)} connections per node, beyond the ${count(m.connections_per_node)} measured`);
    const perNode = p.deliveries / n;
    if (perNode > 1.5 * m.deliveries_per_node) v.push(`${count(perNode)} deliveries/s per node, beyond the ${count(m.deliveries_per_node)} measured`);
    const rooms = p.rooms / n;
    if (rooms > 1.5 * m.rooms_per_node) v.push(`${count(rooms)} rooms per node, beyond the ${count(m.rooms_per_node)} measured`);
    const joins = w.connections / w.rejoin_every_s / n;
    if (joins > 1.5 * m.joins_per_node) v.push(`${short(joins)} joins/s per node, beyond the ${short(m.joins_per_node)} measured`);
    const commands = p.redisCommands / Math.max(shards, 1);
    if (shards > 0 && commands > 1.5 * m.redis_commands) {
      v.push(`${count(commands)} Redis commands/s per shard, beyond the ${count(m.redis_commands)} measured`);
    }
    return v;
  }

  function answer(s, w) {
    const base = Object.assign({}, M.assumptions, { node_max_connections: w.max_connections, rejoin_every_s: w.rejoin_every_s });
    let needed = null;
    for (let n = 1; n <= M.max_nodes; n++) {
      if (shortOf(at(s, w, n, base), w, base) === null) { needed = n; break; }
    }
    const byConnections = Math.min(Math.max(Math.ceil(w.connections / w.max_connections), 1), M.max_nodes);
    const nodes = w.nodes != null ? w.nodes : needed != null ? needed : byConnections;
    const p = at(s, w, nodes, base);
    const why = shortOf(p, w, base);
    const notes = [];
    if (why !== null) {
      if (w.nodes != null && needed != null) notes.push(`does not fit on ${w.nodes} nodes: ${why}; ${needed} would hold it`);
      else if (w.nodes != null) notes.push(`does not fit on ${w.nodes} nodes, nor on up to ${count(M.max_nodes)}: ${why}`);
      else notes.push(`no count of nodes up to ${count(M.max_nodes)} holds it: ${why}`);
    }
    if (s === "local" && p.undelivered > 0) {
      notes.push(`servers share nothing: members miss the ${Math.round(100 * p.undelivered).toFixed(0)} % of messages sent on other servers`);
    }
    const shards = s === "local" ? 0 : Math.max(Math.ceil(p.redis / M.redis_utilisation), 1);
    if (shards > 1) notes.push(`one Redis would need ${short(p.redis)} cores but runs commands on one: ${shards} shards (redis_cluster)`);
    const out = M.measured[s] ? outside(M.measured[s], w, p, shards) : [`the sweep measured no ${s} runs`];
    const e = M.errors[s] || {};
    const pct = (k) => (k in e ? Math.round(1000 * e[k]) / 10 : null);
    const byFigure = {};
    for (const [figure, from] of [["nodes", "node_cores"], ["busiest_node_cores", "node_cores"],
      ["redis_cores", "redis_cores"], ["redis_shards", "redis_cores"],
      ["redis_bytes_per_sec", "redis_bytes_per_sec"], ["cpu_us_per_delivery", "cpu_us_per_delivery"]]) {
      if (pct(from) !== null) byFigure[figure] = pct(from);
    }
    return {
      strategy: s, fits: why === null, nodes, nodes_needed: needed,
      connections_per_node: w.connections / nodes, busiest_node_connections: p.busiestConns,
      deliveries_per_sec: p.deliveries,
      busiest_node_cores: p.busiest, busiest_node_load: p.busiest / w.node_cores,
      mean_node_cores: p.nodeCpu / nodes, redis_cores: p.redis, redis_shards: shards,
      redis_commands_per_sec: p.redisCommands, redis_bytes_per_sec: p.redisBytes,
      cross_node_bytes_per_sec: p.crossBytes, control_cores: p.control,
      cpu_us_per_delivery: p.cpuUs, undelivered_share: p.undelivered,
      error_pct_by_figure: byFigure,
      error_pct: Math.max(0, ...Object.values(byFigure)),
      outside_measured: out.length > 0,
      notes: notes.concat(out),
    };
  }

  function pick(answers, w) {
    const shared = answers.filter((a) => M.shared.includes(a.strategy));
    const fit = shared.filter((a) => a.fits);
    const unfit = shared.filter((a) => !a.fits).map((a) => `${a.strategy} does not fit (${a.notes[0]})`);
    const minBy = (xs, f) => xs.reduce((b, x) => (b === null || f(x) < f(b) ? x : b), null);
    if (fit.length === 0) {
      // The fewest nodes that would hold it; else the lightest busiest node.
      const c = shared.reduce((b, x) => {
        if (b === null) return x;
        const nx = x.nodes_needed === null ? Infinity : x.nodes_needed;
        const nb = b.nodes_needed === null ? Infinity : b.nodes_needed;
        return nx < nb || (nx === nb && x.busiest_node_load < b.busiest_node_load) ? x : b;
      }, null);
      if (!c) return { strategy: "pubsub", why: "the sweep has no model of the shared strategies" };
      return { strategy: c.strategy, why: `no strategy holds this workload; ${c.strategy} comes closest: ${c.notes[0]}` };
    }
    const prov = (a) => a.nodes * w.node_cores + a.redis_shards;
    const least = Math.min(...fit.map(prov));
    const best = minBy(fit.filter((a) => prov(a) <= 1.02 * least), (a) => a.cpu_us_per_delivery);
    const cores = (a) => `${a.nodes} node${a.nodes === 1 ? "" : "s"} and ${a.redis_shards} Redis shard${a.redis_shards === 1 ? "" : "s"}`;
    const others = fit.filter((a) => a.strategy !== best.strategy).map((a) => `${a.strategy} ${cores(a)} at ${short(a.cpu_us_per_delivery)} µs`);
    let why = `${best.strategy} holds it on ${cores(best)} at ${short(best.cpu_us_per_delivery)} µs of CPU per delivery`;
    if (others.length) why += `, against ${others.join(" and ")}`;
    if (unfit.length) why += `; ${unfit.join("; ")}`;
    return { strategy: best.strategy, why };
  }

  function plan(w) {
    const strategies = M.strategies.map((s) => answer(s, w));
    return { workload: w, strategies, pick: pick(strategies, w) };
  }

  function read() {
    const num = (id) => { const v = document.getElementById(id).value.trim(); return v === "" ? null : Number(v); };
    const w = {
      connections: num("p-connections"), room_size: num("p-room-size"), messages_per_member: num("p-rate"),
      nodes: num("p-nodes"), node_cores: num("p-cores"), max_connections: num("p-max"),
      rejoin_every_s: M.assumptions.rejoin_every_s,
    };
    if (w.node_cores === null) w.node_cores = Math.max(M.cores, 1);
    if (w.max_connections === null) w.max_connections = M.assumptions.node_max_connections;
    const whole = (v) => v !== null && Number.isInteger(v);
    if (!whole(w.connections) || w.connections < 1 || w.connections > M.max_connections) {
      throw new Error(`connections must be 1 to ${count(M.max_connections)}`);
    }
    if (!whole(w.room_size) || w.room_size < 1 || w.room_size > w.connections) {
      throw new Error(`room size must be 1 to the connections (${count(w.connections)}): a room's members are connections`);
    }
    if (!(w.messages_per_member >= M.min_messages_per_member && w.messages_per_member <= M.max_messages_per_member)) {
      throw new Error(`messages per member must be ${short(M.min_messages_per_member)} to ${count(M.max_messages_per_member)}`);
    }
    if (w.nodes !== null && (!whole(w.nodes) || w.nodes < 1 || w.nodes > M.max_nodes)) {
      throw new Error(`nodes must be 1 to ${count(M.max_nodes)}`);
    }
    if (!whole(w.max_connections) || w.max_connections < 1 || w.max_connections > 1e8) {
      throw new Error("max_connections must be 1 to 100,000,000");
    }
    if (!(w.node_cores > 0 && w.node_cores <= 1024)) throw new Error("cores per node must be above 0 and at most 1024");
    return w;
  }

  function cell(tr, text, key) {
    const td = document.createElement("td");
    td.textContent = text;
    if (key) td.dataset.k = key;
    tr.appendChild(td);
  }

  function show() {
    const err = document.getElementById("p-error");
    const body = document.getElementById("p-body");
    body.textContent = "";
    let p;
    try {
      p = plan(read());
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
      document.getElementById("p-pick").textContent = "";
      return;
    }
    err.hidden = true;
    const pm = (a, k) => (a.error_pct_by_figure[k] != null ? ` ±${Math.round(a.error_pct_by_figure[k]).toFixed(0)} %` : "");
    for (const a of p.strategies) {
      const tr = document.createElement("tr");
      tr.dataset.strategy = a.strategy;
      cell(tr, a.strategy);
      cell(tr, a.fits ? "yes" : "no", "fits");
      cell(tr, String(a.nodes), "nodes");
      cell(tr, count(a.connections_per_node));
      cell(tr, short(a.busiest_node_cores) + pm(a, "busiest_node_cores"), "busiest_node_cores");
      cell(tr, a.strategy === "local" ? "—" : `${short(a.redis_cores)} (${a.redis_shards})${pm(a, "redis_cores")}`, "redis");
      cell(tr, short(a.redis_bytes_per_sec / 1e6));
      cell(tr, short(a.cross_node_bytes_per_sec / 1e6));
      cell(tr, short(a.cpu_us_per_delivery) + pm(a, "cpu_us_per_delivery"), "cpu_us_per_delivery");
      // The notes beside the figures they qualify.
      cell(tr, a.notes.join("; "), "notes");
      if (a.outside_measured) tr.lastChild.className = "warn";
      body.appendChild(tr);
    }
    const pickEl = document.getElementById("p-pick");
    pickEl.dataset.strategy = p.pick.strategy;
    pickEl.textContent = `Pick: ${p.pick.strategy}. ${p.pick.why[0].toUpperCase()}${p.pick.why.slice(1)}.`;
    const w = p.workload;
    document.getElementById("p-command").textContent =
      `turnout-bench plan --sweep sweep.json --connections ${w.connections} --room-size ${w.room_size} ` +
      `--messages-per-member ${w.messages_per_member}` + (w.nodes != null ? ` --nodes ${w.nodes}` : "") +
      ` --node-cores ${w.node_cores} --max-connections ${w.max_connections}`;
  }

  document.getElementById("planner").addEventListener("submit", (e) => { e.preventDefault(); show(); });
  show();
})();
