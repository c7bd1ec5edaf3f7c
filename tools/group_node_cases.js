// Workflows with legacy group nodes, built in the real frontend by tools/frontend_reference.py --build.
// Each case: build() adds nodes to the empty graph and returns the node lists to turn into group
// nodes (each through the frontend's own "Convert to Group Node"); after(groupNodes) then edits the
// graph (modes, links to the group node). The saved workflow is app.graph.serialize(). With
// legacy: true, a copy with inputs as frontends before 1.16 saved them is made too (no unlinked
// widget inputs). Not for a group whose inner widget was linked from outside when it was made: its
// group widgets would then be ordered unlike the values saved.
({
  // A txt2img graph; the sampler part becomes a group node.
  plain: {
    legacy: true,
    build(h) {
      const g = h.txt2img();
      return [[g.latent, g.sampler, g.decode]];
    },
  },
  // Linked PrimitiveNodes inside the group: one feeds the seed, one feeds both width and height.
  primitive_inside: {
    legacy: true,
    build(h) {
      const g = h.txt2img();
      const seed = h.add("PrimitiveNode", "Seed");
      h.link(seed, 0, g.sampler, "seed");
      seed.widgets[0].value = 1234;
      const size = h.add("PrimitiveNode");
      h.link(size, 0, g.latent, "width");
      h.link(size, 0, g.latent, "height");
      size.widgets[0].value = 640;
      return [[seed, size, g.latent, g.sampler]];
    },
  },
  // Reroutes inside the group: one between two inner nodes, one fed from outside, one leading out.
  reroute_inside: {
    legacy: true,
    build(h) {
      const g = h.txt2img();
      const inner = h.add("Reroute");
      const fromOutside = h.add("Reroute");
      const out = h.add("Reroute");
      h.link(g.sampler, 0, inner, 0);
      h.link(inner, 0, g.decode, "samples");
      h.link(g.ckpt, 2, fromOutside, 0);
      h.link(fromOutside, 0, g.decode, "vae");
      h.link(g.decode, 0, out, 0);
      h.link(out, 0, g.save, "images");
      return [[g.sampler, inner, fromOutside, g.decode, out]];
    },
  },
  // A PrimitiveNode outside the group node feeds two of its widget inputs.
  primitive_outside: {
    legacy: true,
    build(h) {
      const g = h.txt2img();
      h.sd = g;
      return [[g.latent, g.sampler]];
    },
    after(h, [group]) {
      const seed = h.add("PrimitiveNode", "Seed");
      h.link(seed, 0, group, "seed");
      seed.widgets[0].value = 98765;
      const steps = h.add("PrimitiveNode");
      h.link(steps, 0, group, "steps");
      steps.widgets[0].value = 7;
    },
  },
  // A group node of two chained LoRA loaders, bypassed: consumers get the checkpoint's outputs.
  bypassed: {
    legacy: true,
    build(h) {
      const g = h.txt2img();
      const a = h.add("LoraLoader");
      const b = h.add("LoraLoader");
      h.link(g.ckpt, 0, a, "model");
      h.link(g.ckpt, 1, a, "clip");
      h.link(a, 0, b, "model");
      h.link(a, 1, b, "clip");
      h.link(b, 0, g.sampler, "model");
      h.link(b, 1, g.pos, "clip");
      h.link(b, 1, g.neg, "clip");
      a.widgets[1].value = 0.5;
      return [[a, b]];
    },
    after(h, [group]) {
      group.mode = 4;
    },
  },
  // The same group node muted: it and every input linked to it are dropped.
  muted: {
    legacy: true,
    build(h) {
      return h.cases.bypassed.build(h);
    },
    after(h, [group]) {
      group.mode = 2;
    },
  },
  // Widgets converted to inputs: inside, a PrimitiveInt node feeds the sampler's steps; outside,
  // another feeds the group node's seed input.
  converted_widget: {
    legacy: true,
    build(h) {
      const g = h.txt2img();
      const steps = h.add("PrimitiveInt");
      steps.widgets[0].value = 12;
      h.link(steps, 0, g.sampler, "steps");
      return [[steps, g.sampler, g.decode]];
    },
    after(h, [group]) {
      const seed = h.add("PrimitiveInt");
      seed.widgets[0].value = 31337;
      h.link(seed, 0, group, "seed");
      const cfg = group.widgets.find((w) => w.name === "cfg");
      cfg.value = 5.5;
    },
  },
  // Two group nodes in one workflow, the second using the first's output, plus a Note inside one.
  two_groups: {
    legacy: true,
    build(h) {
      const g = h.txt2img();
      const note = h.add("Note");
      note.widgets[0].value = "inside the group";
      return [
        [g.ckpt, g.pos, g.neg],
        [g.latent, g.sampler, note],
      ];
    },
  },
  // PrimitiveNodes inside feeding a list widget (sampler) and a text widget; one inner node's own
  // widgets stay on the group node.
  primitive_combo_text: {
    legacy: true,
    build(h) {
      const g = h.txt2img();
      const sampler = h.add("PrimitiveNode", "Sampler");
      h.link(sampler, 0, g.sampler, "sampler_name");
      sampler.widgets[0].value = "dpmpp_2m";
      const text = h.add("PrimitiveNode");
      h.link(text, 0, g.pos, "text");
      text.widgets[0].value = "a red fox in snow";
      return [[sampler, text, g.pos, g.sampler]];
    },
  },
  // A Reroute inside the group, fed from a PrimitiveInt outside, feeds the sampler's steps.
  reroute_to_widget: {
    legacy: true,
    build(h) {
      const g = h.txt2img();
      const steps = h.add("PrimitiveInt");
      steps.widgets[0].value = 9;
      const reroute = h.add("Reroute");
      h.link(steps, 0, reroute, 0);
      h.link(reroute, 0, g.sampler, "steps");
      return [[reroute, g.sampler, g.decode]];
    },
  },
})
