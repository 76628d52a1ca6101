// pipecat's stock browser client, exposed to the headless-Chromium tests as window.Pipecat.
import { PipecatClient, RTVIEvent } from "@pipecat-ai/client-js";
import { SmallWebRTCTransport } from "@pipecat-ai/small-webrtc-transport";

window.Pipecat = { PipecatClient, RTVIEvent, SmallWebRTCTransport };
