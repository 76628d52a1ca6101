// Browser client for voxtral-pipeline: WebRTC to the bot's /api/offer, events on the data channel.
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const $ = (id) => document.getElementById(id);
  const LABELS = [["end_of_turn", "end of turn"], ["ttft", "first token"], ["first_chunk", "first chunk"],
                  ["first_audio", "first audio"], ["voice_to_voice", "voice to voice"]];
  const state = { state: "idle", events: 0, botText: "", turns: [], error: null, interrupted: 0, userText: [], rtvi: {} };
  window.voxtral = state;  // for tests and the curious
  let pc = null, dc = null, stream = null, ping = null, bot = null, meterTimer = null;
  // The bot is answering from its first token until it stops speaking: only then can the user
  // cut it off (the server says "interruption" whenever the user starts speaking).
  let generating = false, speaking = false, user = null, heard = null;

  function setState(s, text) {
    state.state = s;
    document.body.dataset.state = s;
    $("status").textContent = text || s;
    const button = $("connect");
    const busy = s === "connected" || s === "connecting";
    button.textContent = busy ? "Disconnect" : "Connect";
    button.className = busy ? "stop" : "";
  }

  function add(cls, who, text) {
    const hint = $("hint");
    if (hint) hint.remove();
    const el = document.createElement("div");
    el.className = "msg " + cls;
    const w = document.createElement("span");
    w.className = "who";
    w.textContent = who;
    el.appendChild(w);
    el.appendChild(document.createTextNode(text));
    $("conversation").appendChild(el);
    el.scrollIntoView({ block: "end" });
    return el;
  }

  function botBubble() {
    if (!bot) bot = add("bot", "Voxtral", "");
    return bot;
  }

  function showTurn(m) {
    // A provisional waterfall comes when the bot stops speaking, the final one when the turn closes.
    const i = state.turns.findIndex((t) => t.turn === m.turn);
    if (i >= 0) state.turns[i] = m; else state.turns.push(m);
    const box = $("turns");
    if (box.querySelector(".hint")) box.textContent = "";
    const max = Math.max(1, ...LABELS.map(([k]) => m[k + "_ms"] || 0));
    let el = document.getElementById("turn-" + m.turn);
    if (el) el.textContent = "";
    else { el = document.createElement("div"); el.id = "turn-" + m.turn; box.prepend(el); }
    el.className = "turn";
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = "Turn " + (m.turn + 1) + (m.interrupted ? " (interrupted)" : "");
    el.appendChild(title);
    for (const [k, label] of LABELS) {
      const v = m[k + "_ms"];
      const row = document.createElement("div");
      row.className = "bar k-" + k;
      const name = document.createElement("span");
      name.textContent = label;
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = v == null ? "0" : Math.max(1, (100 * v) / max) + "%";
      track.appendChild(fill);
      const ms = document.createElement("span");
      ms.className = "ms";
      ms.textContent = v == null ? "—" : Math.round(v) + " ms";
      row.append(name, track, ms);
      el.appendChild(row);
    }
  }

  function showUserWords(text) {
    // The user's transcript (RTVI user-transcription) replaces the "spoke for" note of its turn.
    if (user && !user.dataset.heard) {
      user.lastChild.textContent = text;
      user.dataset.heard = "1";
    } else {
      heard = text;  // its turn's bubble comes next
    }
    state.userText.push(text);
  }

  function onRTVI(m) {
    // pipecat's RTVI messages (label "rtvi-ai"); our own events carry the rest.
    state.rtvi[m.type] = (state.rtvi[m.type] || 0) + 1;
    if (m.type === "user-transcription" && m.data && m.data.final && m.data.text) showUserWords(m.data.text);
  }

  function onEvent(m) {
    state.events += 1;
    switch (m.type) {
      case "user-turn":
        user = add("user", "You", heard || "spoke for " + m.duration_s.toFixed(1) + " s (Voxtral hears the audio itself)");
        if (heard) user.dataset.heard = "1";
        heard = null;
        bot = null;
        break;
      case "bot-response-start": generating = true; botBubble(); break;
      case "bot-response-end": generating = false; break;
      case "bot-text":
        state.botText += m.text;
        botBubble().appendChild(document.createTextNode(m.text));
        $("conversation").scrollTop = 1e9;
        break;
      case "bot-started-speaking": speaking = true; if (bot) bot.classList.add("speaking"); break;
      case "bot-stopped-speaking": speaking = false; if (bot) bot.classList.remove("speaking"); break;
      case "interruption":
        if (bot && (generating || speaking)) {
          bot.classList.add("interrupted");
          state.interrupted += 1;
        }
        if (bot) bot.classList.remove("speaking");
        generating = speaking = false;
        break;
      case "turn-metrics": showTurn(m); break;
      default: break;
    }
  }

  function meter(s) {
    try {
      const ctx = new AudioContext();
      const analyser = ctx.createAnalyser();
      ctx.createMediaStreamSource(s).connect(analyser);
      const data = new Uint8Array(analyser.fftSize);
      meterTimer = setInterval(() => {
        analyser.getByteTimeDomainData(data);
        let peak = 0;
        for (const x of data) peak = Math.max(peak, Math.abs(x - 128));
        $("meter").firstElementChild.style.width = Math.min(100, peak * 1.6) + "%";
      }, 100);
    } catch (e) { /* the meter is a nicety */ }
  }

  async function connect() {
    setState("connecting", "connecting…");
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
      meter(stream);
      pc = new RTCPeerConnection({ iceServers: [] });
      for (const track of stream.getAudioTracks()) pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
      pc.ontrack = (e) => { $("bot-audio").srcObject = e.streams[0] || new MediaStream([e.track]); };
      dc = pc.createDataChannel("events", { ordered: true });
      dc.onopen = () => {
        // An RTVI client too: the bot answers bot-ready, then sends pipecat's RTVI messages.
        dc.send(JSON.stringify({ label: "rtvi-ai", type: "client-ready", id: "voxtral-page",
          data: { version: "2.2.0", about: { library: "voxtral-pipeline page" } } }));
        ping = setInterval(() => dc.readyState === "open" && dc.send("ping"), 1000);
      };
      dc.onmessage = (e) => {
        let m;
        try { m = JSON.parse(e.data); } catch (err) { return; }
        if (!m || typeof m.type !== "string") return;
        if (m.label === "rtvi-ai") onRTVI(m); else onEvent(m);
      };
      pc.onconnectionstatechange = () => {
        const s = pc && pc.connectionState;
        if (s === "connected") setState("connected", "connected: speak");
        else if (s === "failed" || s === "closed") disconnect("disconnected");
      };
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise((resolve) => {
        if (pc.iceGatheringState === "complete") return resolve();
        const done = () => pc.iceGatheringState === "complete" && resolve();
        pc.addEventListener("icegatheringstatechange", done);
        setTimeout(resolve, 2000);
      });
      const url = "/api/offer" + (token ? "?token=" + encodeURIComponent(token) : "");
      const res = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }) });
      const answer = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(answer.error || "the bot refused the connection (" + res.status + ")");
      $("session").textContent = "Session " + answer.pc_id + ".";
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    } catch (e) {
      state.error = String(e.message || e);
      disconnect("error");
      setState("error", state.error);
    }
  }

  function disconnect(why) {
    clearInterval(ping); clearInterval(meterTimer);
    if (dc) dc.close();
    if (pc) pc.close();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    pc = dc = stream = null;
    setState("idle", why || "not connected");
  }

  $("connect").addEventListener("click", () => (pc ? disconnect() : connect()));
  if (params.get("autoconnect") === "1") connect();
})();
