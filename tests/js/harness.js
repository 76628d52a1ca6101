// Drives pipecat's stock client (window.Pipecat, from build/pipecat-client.js) for the Chromium tests.
// runClient(mode, base, token): mode "connect" sends the offer to base/api/offer, "start" calls
// base/start first (startBotAndConnect). window.clientLog collects what the client saw.
"use strict";

class MicMediaManager {
  constructor() { this._track = null; this._mic = true; }
  setUserAudioCallback() {}
  setClientOptions(options) { this._mic = options.enableMic ?? true; }
  async initialize() {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    this._track = stream.getAudioTracks()[0];
  }
  async connect() { if (!this._track) await this.initialize(); this._track.enabled = this._mic; }
  async disconnect() { if (this._track) this._track.stop(); this._track = null; }
  async getAllMics() { return []; }
  async getAllCams() { return []; }
  async getAllSpeakers() { return []; }
  updateMic() {} updateCam() {} updateSpeaker() {}
  enableMic(on) { this._mic = on; if (this._track) this._track.enabled = on; }
  enableCam() {} enableScreenShare() {}
  get isMicEnabled() { return this._mic; }
  get isCamEnabled() { return false; }
  get isSharingScreen() { return false; }
  get selectedMic() { return {}; }
  get selectedCam() { return {}; }
  get selectedSpeaker() { return {}; }
  get supportsScreenShare() { return false; }
  tracks() { return { local: { audio: this._track || undefined }, bot: {} }; }
}
window.runClient = async (mode, base, token) => {
  const log = { mode, ready: false, botText: "", output: "", events: {}, patches: [], requests: [],
                errors: [], track: false, peak: 0, connected: false };
  window.clientLog = log;
  if (!window.__fetch) window.__fetch = window.fetch.bind(window);
  window.fetch = async (input, init) => {
    const res = await window.__fetch(input, init);
    const url = typeof input === "string" ? input : input.url;
    const method = (init && init.method) || (typeof input === "string" ? "GET" : input.method);
    if (method === "PATCH") log.patches.push(res.status);
    else log.requests.push([method, url.replace(base, "").replace(/\?.*/, ""), res.status]);
    return res;
  };
  const meter = (track) => {
    const audio = new Audio();
    audio.srcObject = new MediaStream([track]);  // Chrome feeds remote tracks to WebAudio only when played
    audio.play().catch(() => {});
    const ctx = new AudioContext();
    const analyser = ctx.createAnalyser();
    ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    setInterval(() => {
      analyser.getFloatTimeDomainData(buf);
      for (const x of buf) log.peak = Math.max(log.peak, Math.abs(x));
    }, 50);
  };
  // The transport's default media manager (DailyMediaManager) loads Daily's call-machine bundle
  // from c.daily.co, which this offline machine cannot reach: MicMediaManager is the transport's
  // mediaManager option with getUserMedia, and nothing else is replaced.
  const transport = new Pipecat.SmallWebRTCTransport({ waitForICEGathering: false, mediaManager: new MicMediaManager() });
  const client = new Pipecat.PipecatClient({
    transport, enableMic: true, enableCam: false,
    callbacks: {
      onBotReady: () => { log.ready = true; },
      onBotLlmText: (d) => { log.botText += d.text; },
      onBotOutput: (d) => { log.output += d.text; },
      onError: (m) => { log.errors.push(JSON.stringify(m).slice(0, 300)); },
      onTrackStarted: (track, p) => { if (track.kind === "audio" && !(p && p.local)) { log.track = true; meter(track); } },
    },
  });
  for (const ev of ["BotStartedSpeaking", "BotStoppedSpeaking", "UserStartedSpeaking", "UserStoppedSpeaking",
                    "UserTranscript", "Metrics"]) {
    client.on(Pipecat.RTVIEvent[ev], () => { log.events[ev] = (log.events[ev] || 0) + 1; });
  }
  window.client = client;
  const q = "?token=" + encodeURIComponent(token);
  if (mode === "connect") await client.connect({ webrtcRequestParams: { endpoint: base + "/api/offer" + q } });
  else await client.startBotAndConnect({ endpoint: base + "/start" + q });
  log.connected = true;
  return "connected";
};
